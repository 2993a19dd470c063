/** Prometheus metrics at /metrics (prom-client): process defaults, HTTP latency, notifications. */
import client from 'prom-client';
import type { FastifyInstance } from 'fastify';

export const registry = new client.Registry();
client.collectDefaultMetrics({ register: registry });

const httpDuration = new client.Histogram({
  name: 'knowpay_http_request_duration_seconds',
  help: 'HTTP request duration by route and status',
  labelNames: ['method', 'route', 'status'] as const,
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
  registers: [registry],
});

export const notificationsTotal = new client.Counter({
  name: 'knowpay_channel_notifications_total',
  help: 'Channel notifications received, by channel and outcome',
  labelNames: ['channel', 'outcome'] as const,
  registers: [registry],
});

export function installMetrics(app: FastifyInstance): void {
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unmatched';
    httpDuration.observe({ method: req.method, route, status: String(reply.statusCode) }, reply.elapsedTime / 1000);
  });
  app.get('/metrics', { schema: { hide: true } as object }, async (_req, reply) => {
    reply.type(registry.contentType);
    return registry.metrics();
  });
}
