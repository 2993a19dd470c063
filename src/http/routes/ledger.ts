import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { AppContext } from '../context.ts';
import { Currency, Id, IdParams, ListQuery, Timestamp } from '../schemas.ts';
import { listEntries, trialBalance, walletBalances } from '../../ledger/ledger.ts';
import { creatorBalance, getSettlement, payoutsCsv, runSettlement } from '../../settlement/settlement.ts';
import { adjustCreator, getPayout, listPayouts, settlePayout } from '../../settlement/payouts.ts';
import { normalizeCurrency, MAX_AMOUNT_MINOR_NUMBER } from '../../domain/money.ts';
import { invalid } from '../../domain/errors.ts';

export const ledgerRoutes: FastifyPluginAsyncTypebox<{ ctx: AppContext }> = async (app, { ctx }) => {
  app.get('/v1/creators/:id/balance', { schema: { tags: ['ledger'], params: IdParams } }, async (req) => creatorBalance(ctx.db, req.params.id));
  app.get('/v1/customers/:customer_id/wallet', {
    schema: { tags: ['wallet'], params: Type.Object({ customer_id: Type.String({ minLength: 1, maxLength: 128 }) }) },
  }, async (req) => walletBalances(ctx.db, req.params.customer_id));
  app.get('/v1/ledger/entries', {
    schema: { tags: ['ledger'], querystring: Type.Composite([ListQuery, Type.Object({ reference: Type.Optional(Id), account: Type.Optional(Type.String({ maxLength: 300 })) })]) },
  }, async (req) => listEntries(ctx.db, { ...req.query, limit: req.query.limit ?? 10 }));
  app.get('/v1/ledger/trial_balance', { schema: { tags: ['ledger'] } }, async () => trialBalance(ctx.db));
  app.post('/v1/ledger/adjustments', {
    schema: {
      tags: ['ledger'],
      body: Type.Object({
        creator_id: Id, currency: Currency,
        amount: Type.Integer({ minimum: -MAX_AMOUNT_MINOR_NUMBER, maximum: MAX_AMOUNT_MINOR_NUMBER, description: 'Signed minor units: positive credits the creator' }),
        reason: Type.String({ minLength: 1, maxLength: 500 }),
      }, { additionalProperties: false }),
    },
  }, async (req) => {
    const currency = normalizeCurrency(req.body.currency);
    if (!currency) throw invalid('currency_not_supported', `Unknown currency '${req.body.currency}'`, 'currency');
    const key = req.headers['idempotency-key'];
    return adjustCreator(ctx.db, { ...req.body, currency, idempotency_key: typeof key === 'string' ? key : undefined });
  });
  app.post('/v1/settlements', {
    schema: { tags: ['settlement'], body: Type.Optional(Type.Object({ as_of: Type.Optional(Timestamp) }, { additionalProperties: false })) },
  }, async (req) => runSettlement(ctx.db, { asOf: req.body?.as_of !== undefined ? new Date(req.body.as_of * 1000) : undefined }));
  app.get('/v1/settlements/:id', { schema: { tags: ['settlement'], params: IdParams } }, async (req) => getSettlement(ctx.db, req.params.id));
  app.get('/v1/settlements/:id/payouts.csv', { schema: { tags: ['settlement'], params: IdParams } }, async (req, reply) => {
    reply.type('text/csv; charset=utf-8').header('content-disposition', `attachment; filename="payouts-${req.params.id}.csv"`);
    return payoutsCsv(ctx.db, req.params.id);
  });
  app.get('/v1/payouts', {
    schema: { tags: ['settlement'], querystring: Type.Composite([ListQuery, Type.Object({ creator_id: Type.Optional(Id), settlement_id: Type.Optional(Id) })]) },
  }, async (req) => listPayouts(ctx.db, { ...req.query, limit: req.query.limit ?? 10 }));
  app.get('/v1/payouts/:id', { schema: { tags: ['settlement'], params: IdParams } }, async (req) => getPayout(ctx.db, req.params.id));
  app.post('/v1/payouts/:id/paid', { schema: { tags: ['settlement'], params: IdParams } }, async (req) => settlePayout(ctx.db, req.params.id, 'paid'));
  app.post('/v1/payouts/:id/failed', { schema: { tags: ['settlement'], params: IdParams } }, async (req) => settlePayout(ctx.db, req.params.id, 'failed'));
};
