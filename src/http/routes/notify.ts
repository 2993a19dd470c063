/**
 * Channel notifications: the raw bytes are kept (signatures cover bytes), so this scope replaces
 * the body parsers with one that keeps the Buffer. No API key: the channel's signature is the auth.
 */
import type { FastifyPluginAsync } from 'fastify';
import type { AppContext } from '../context.ts';
import { handleNotification } from '../../payments/notifications.ts';
import { ApiError } from '../../domain/errors.ts';
import type { ChannelName } from '../../channels/types.ts';
import { notificationsTotal } from '../metrics.ts';

export const notifyRoutes: FastifyPluginAsync<{ ctx: AppContext }> = async (app, { ctx }) => {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
  app.post<{ Params: { channel: string } }>('/v1/notify/:channel', { schema: { hide: true } as object }, async (req, reply) => {
    const connector = ctx.channels.get(req.params.channel as ChannelName);
    if (!connector) throw new ApiError(404, 'invalid_request_error', 'resource_missing', `No channel '${req.params.channel}'`);
    const rawBody = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    const result = await handleNotification(ctx.db, connector, { headers: req.headers, rawBody, contentType: req.headers['content-type'] });
    notificationsTotal.inc({ channel: connector.channel, outcome: result.outcome });
    req.log.info({ channel: connector.channel, outcome: result.outcome, reason: result.reason, payment_id: result.paymentId }, 'channel notification');
    return reply.code(result.ack.statusCode).type(result.ack.contentType).send(result.ack.body);
  });
};
