import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { AppContext } from '../context.ts';
import { Id, IdParams, ListQuery, PositiveAmount } from '../schemas.ts';
import { createRefund, getRefund, listRefunds } from '../../refunds/refunds.ts';

export const refundRoutes: FastifyPluginAsyncTypebox<{ ctx: AppContext }> = async (app, { ctx }) => {
  app.post('/v1/refunds', {
    schema: {
      tags: ['refunds'],
      body: Type.Object({
        payment_id: Id,
        amount: Type.Optional(PositiveAmount),
        reason: Type.Optional(Type.String({ minLength: 1, maxLength: 500 })),
        product_ids: Type.Optional(Type.Array(Id, { maxItems: 50, description: 'Products whose access this refund takes back (a full refund takes back all)' })),
        force: Type.Optional(Type.Boolean({ description: 'Refund a coin pack even if its coins were spent' })),
      }, { additionalProperties: false }),
    },
  }, async (req) => createRefund({ ...ctx.payments, ...ctx.sync }, req.body));
  app.get('/v1/refunds/:id', { schema: { tags: ['refunds'], params: IdParams } }, async (req) => getRefund(ctx.db, req.params.id));
  app.get('/v1/refunds', {
    schema: { tags: ['refunds'], querystring: Type.Composite([ListQuery, Type.Object({ payment_id: Type.Optional(Id) })]) },
  }, async (req) => listRefunds(ctx.db, { ...req.query, limit: req.query.limit ?? 10 }));
};
