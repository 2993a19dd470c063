import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { AppContext } from '../context.ts';
import { Id, ListQuery } from '../schemas.ts';
import { checkAccess, listEntitlements } from '../../entitlements/entitlements.ts';

const Customer = Type.String({ minLength: 1, maxLength: 128 });

export const customerRoutes: FastifyPluginAsyncTypebox<{ ctx: AppContext }> = async (app, { ctx }) => {
  app.get('/v1/customers/:customer_id/entitlements', {
    schema: { tags: ['entitlements'], params: Type.Object({ customer_id: Customer }), querystring: ListQuery },
  }, async (req) => listEntitlements(ctx.db, req.params.customer_id, { limit: req.query.limit ?? 10, starting_after: req.query.starting_after }));
  app.get('/v1/customers/:customer_id/access/:product_id', {
    schema: { tags: ['entitlements'], params: Type.Object({ customer_id: Customer, product_id: Id }) },
  }, async (req) => checkAccess(ctx.db, req.params.customer_id, req.params.product_id));
};
