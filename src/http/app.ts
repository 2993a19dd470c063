/**
 * The Fastify app: external plugins, then Knowpay's own (errors, auth, idempotency), then routes.
 * Schema-first: TypeBox schemas validate requests and feed the OpenAPI document.
 */
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import formbody from '@fastify/formbody';
import rateLimit from '@fastify/rate-limit';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import Ajv from 'ajv';
import type { AppContext } from './context.ts';
import { installErrorHandling } from './errors.ts';
import { ApiKeyVerifier } from './auth.ts';
import { installIdempotency } from './idempotency.ts';
import { installMetrics } from './metrics.ts';
import { catalogRoutes } from './routes/catalog.ts';
import { orderRoutes } from './routes/orders.ts';
import { customerRoutes } from './routes/customers.ts';
import { notifyRoutes } from './routes/notify.ts';
import { ledgerRoutes } from './routes/ledger.ts';
import { refundRoutes } from './routes/refunds.ts';
import { reconciliationRoutes } from './routes/reconciliations.ts';

export interface BuildAppOptions {
  ctx: AppContext;
  /** A pino logger shared with the rest of the process. */
  loggerInstance: FastifyBaseLogger;
  bodyLimitBytes: number;
  rateLimitPerMinute?: number;
  /** Registered last, outside /v1 (channel sandboxes). */
  extra?: (app: FastifyInstance) => Promise<void>;
}

export const LOG_REDACT = [
  'req.headers.authorization', 'req.headers.cookie', 'headers.authorization',
  '*.privateKey', '*.private_key', '*.apiKey', '*.secret', 'config.apiKey',
];

/** Bodies are validated strictly (no type coercion: "100" is not an amount); queries are coerced. */
function validatorCompiler() {
  const body = new Ajv.default({ coerceTypes: false, useDefaults: true, removeAdditional: false, allErrors: false, strict: false });
  const other = new Ajv.default({ coerceTypes: 'array', useDefaults: true, removeAdditional: false, allErrors: false, strict: false });
  return ({ schema, httpPart }: { schema: object; httpPart?: string }) => (httpPart === 'body' ? body : other).compile(schema);
}

export async function buildApp(opts: BuildAppOptions): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: opts.loggerInstance,
    bodyLimit: opts.bodyLimitBytes,
    trustProxy: false,
  }).withTypeProvider<TypeBoxTypeProvider>();
  app.setValidatorCompiler(validatorCompiler());
  installErrorHandling(app);

  await app.register(formbody, { bodyLimit: opts.bodyLimitBytes });
  await app.register(rateLimit, {
    max: opts.rateLimitPerMinute ?? 100_000,
    timeWindow: '1 minute',
    errorResponseBuilder: (_req, ctx) => ({
      statusCode: 429,
      error: { type: 'invalid_request_error', code: 'rate_limited', message: `Rate limit of ${ctx.max} requests per ${ctx.after} exceeded` },
    }),
  });
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'Knowpay API', version: '0.1.0', description: 'Payments and settlement for paid-knowledge platforms' },
      components: { securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearerAuth: [] }],
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  const verifier = new ApiKeyVerifier(opts.ctx.db);
  app.addHook('onRequest', async (req) => {
    const path = req.url.split('?')[0]!;
    if (!path.startsWith('/v1/') || path.startsWith('/v1/notify/')) return;
    await verifier.verify(req);
  });
  installIdempotency(app, opts.ctx.db);
  installMetrics(app);

  app.get('/healthz', { schema: { hide: true } as object }, async (_req, reply) => {
    try {
      await opts.ctx.db.query('SELECT 1 FROM knowpay_migrations LIMIT 1');
      return { status: 'ok' };
    } catch {
      return reply.code(503).send({ status: 'unavailable' });
    }
  });
  app.get('/openapi.json', { schema: { hide: true } as object }, async () => app.swagger());

  await app.register(catalogRoutes, { ctx: opts.ctx });
  await app.register(orderRoutes, { ctx: opts.ctx });
  await app.register(customerRoutes, { ctx: opts.ctx });
  await app.register(ledgerRoutes, { ctx: opts.ctx });
  await app.register(refundRoutes, { ctx: opts.ctx });
  await app.register(reconciliationRoutes, { ctx: opts.ctx });
  await app.register(notifyRoutes, { ctx: opts.ctx });
  if (opts.extra) await opts.extra(app);
  return app;
}
