import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { AppContext } from '../context.ts';
import { CreateCouponBody, CreateCreatorBody, CreateProductBody, IdParams } from '../schemas.ts';
import { createCoupon, createCreator, createProduct, getCoupon, getCreator, getProduct } from '../../catalog/catalog.ts';

export const catalogRoutes: FastifyPluginAsyncTypebox<{ ctx: AppContext }> = async (app, { ctx }) => {
  app.post('/v1/creators', { schema: { tags: ['catalog'], body: CreateCreatorBody } }, async (req) => createCreator(ctx.db, req.body));
  app.get('/v1/creators/:id', { schema: { tags: ['catalog'], params: IdParams } }, async (req) => getCreator(ctx.db, req.params.id));
  app.post('/v1/products', { schema: { tags: ['catalog'], body: CreateProductBody } }, async (req) => createProduct(ctx.db, req.body));
  app.get('/v1/products/:id', { schema: { tags: ['catalog'], params: IdParams } }, async (req) => getProduct(ctx.db, req.params.id));
  app.post('/v1/coupons', { schema: { tags: ['catalog'], body: CreateCouponBody } }, async (req) => createCoupon(ctx.db, req.body));
  app.get('/v1/coupons/:id', { schema: { tags: ['catalog'], params: IdParams } }, async (req) => getCoupon(ctx.db, req.params.id));
};
