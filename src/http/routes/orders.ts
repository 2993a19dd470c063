import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { AppContext } from '../context.ts';
import { CreateOrderBody, CreatePaymentBody, IdParams, ListOrdersQuery } from '../schemas.ts';
import { createOrder, getOrder, getOrderRow, listOrders } from '../../orders/orders.ts';
import { confirmPayment, createPayment, getPaymentWithAdvice, listPaymentMethods } from '../../payments/payments.ts';
import { Type } from '@sinclair/typebox';
import { endOrder } from '../../payments/sync.ts';
import { ApiError } from '../../domain/errors.ts';
import type { ChannelName } from '../../channels/types.ts';

export const orderRoutes: FastifyPluginAsyncTypebox<{ ctx: AppContext }> = async (app, { ctx }) => {
  app.post('/v1/orders', { schema: { tags: ['orders'], body: CreateOrderBody } }, async (req) =>
    createOrder(ctx.db, req.body, { orderTtlMs: ctx.orderTtlMs }));
  app.get('/v1/orders/:id', { schema: { tags: ['orders'], params: IdParams } }, async (req) => getOrder(ctx.db, req.params.id));
  app.get('/v1/orders', { schema: { tags: ['orders'], querystring: ListOrdersQuery } }, async (req) =>
    listOrders(ctx.db, { ...req.query, limit: req.query.limit ?? 10 }));
  app.post('/v1/orders/:id/cancel', { schema: { tags: ['orders'], params: IdParams } }, async (req) => {
    const order = await getOrderRow(ctx.db, req.params.id);
    if (order.status !== 'pending') {
      throw new ApiError(400, 'invalid_request_error', 'order_not_cancelable', `Order ${order.id} is ${order.status}`);
    }
    await endOrder(ctx.sync, order.id, 'canceled', 'canceled_by_request');
    return getOrder(ctx.db, order.id);
  });
  app.get('/v1/orders/:id/payment_methods', { schema: { tags: ['payments'], params: IdParams } }, async (req) =>
    listPaymentMethods(ctx.payments, req.params.id));
  app.post('/v1/orders/:id/payments', { schema: { tags: ['payments'], params: IdParams, body: CreatePaymentBody } }, async (req) =>
    createPayment(ctx.payments, req.params.id, { ...req.body, channel: req.body.channel as ChannelName }));
  app.get('/v1/payments/:id', { schema: { tags: ['payments'], params: IdParams } }, async (req) => getPaymentWithAdvice(ctx.payments, req.params.id));
  app.post('/v1/payments/:id/confirm', {
    schema: {
      tags: ['payments'], params: IdParams,
      description: "The client app's proof of purchase: `{ signed_transaction }` (Apple) or `{ purchase_token, product_id }` (Google Play)",
      body: Type.Record(Type.String({ maxLength: 64 }), Type.Union([Type.String({ maxLength: 65536 }), Type.Number(), Type.Boolean()]), { maxProperties: 10 }),
    },
  }, async (req) => confirmPayment(ctx.payments, req.params.id, req.body));
};
