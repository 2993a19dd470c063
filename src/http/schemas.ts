/** Request schemas (TypeBox): validation and the OpenAPI document come from the same source. */
import { Type, type Static } from '@sinclair/typebox';
import { MAX_AMOUNT_MINOR_NUMBER } from '../domain/money.ts';

export const Amount = Type.Integer({ minimum: 0, maximum: MAX_AMOUNT_MINOR_NUMBER, description: 'Integer minor units (fen, cents)' });
export const PositiveAmount = Type.Integer({ minimum: 1, maximum: MAX_AMOUNT_MINOR_NUMBER, description: 'Integer minor units, > 0' });
export const Currency = Type.String({ minLength: 3, maxLength: 3, description: 'ISO 4217 code, case-insensitive' });
export const Id = Type.String({ minLength: 1, maxLength: 64 });
export const Timestamp = Type.Integer({ minimum: 0, maximum: 32503680000, description: 'Unix seconds' });
export const ClientPlatform = Type.Union(['web', 'h5', 'ios', 'android', 'wechat_mini'].map((p) => Type.Literal(p)));
export const Channel = Type.Union(['alipay', 'wechatpay', 'stripe', 'paypal', 'apple_iap', 'google_play', 'wallet'].map((c) => Type.Literal(c)));
export const ProductType = Type.Union(['course', 'column', 'live', 'membership', 'coin_pack'].map((t) => Type.Literal(t)));

const strict = { additionalProperties: false } as const;

export const CreateCreatorBody = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 200 }),
  revenue_share_bps: Type.Integer({ minimum: 0, maximum: 10000 }),
  settlement_delay_days: Type.Optional(Type.Integer({ minimum: 0, maximum: 365 })),
  min_payout_amount: Type.Optional(Amount),
}, strict);

export const CreateProductBody = Type.Object({
  title: Type.String({ minLength: 1, maxLength: 200 }),
  type: ProductType,
  creator_id: Id,
  prices: Type.Array(Type.Object({ currency: Currency, unit_amount: Amount }, strict), { minItems: 1, maxItems: 50 }),
  access_days: Type.Optional(Type.Integer({ minimum: 1, maximum: 36500 })),
  wallet_credit: Type.Optional(Type.Object({ currency: Currency, amount: PositiveAmount }, strict)),
  store_product_ids: Type.Optional(Type.Object({
    apple_iap: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
    google_play: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
  }, { ...strict, description: "The product's id in each app store (for in-app purchase)" })),
}, strict);

export const CreateCouponBody = Type.Object({
  code: Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_-]+$' }),
  percent_off_bps: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })),
  amount_off: Type.Optional(Type.Object({ currency: Currency, amount: PositiveAmount }, strict)),
  max_redemptions: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000_000 })),
  valid_from: Type.Optional(Timestamp),
  expires_at: Type.Optional(Timestamp),
  product_ids: Type.Optional(Type.Array(Id, { maxItems: 100 })),
}, strict);

export const CreateOrderBody = Type.Object({
  customer_id: Type.String({ minLength: 1, maxLength: 128 }),
  currency: Currency,
  items: Type.Array(Type.Object({ product_id: Id, quantity: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })) }, strict), { minItems: 1, maxItems: 50 }),
  coupon_code: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
  client_platform: ClientPlatform,
}, strict);

export const CreatePaymentBody = Type.Object({
  channel: Channel,
  method: Type.Optional(Type.String({ minLength: 1, maxLength: 32 })),
  payer: Type.Optional(Type.Record(Type.String({ maxLength: 64 }), Type.String({ maxLength: 256 }), { maxProperties: 10 })),
  return_url: Type.Optional(Type.String({ minLength: 1, maxLength: 1024, pattern: '^https?://' })),
}, strict);

export const ListQuery = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, default: 10 })),
  starting_after: Type.Optional(Id),
});

export const ListOrdersQuery = Type.Composite([ListQuery, Type.Object({
  customer_id: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  status: Type.Optional(Type.String({ maxLength: 32 })),
})]);

export const IdParams = Type.Object({ id: Id });

export type CreateCreatorBody = Static<typeof CreateCreatorBody>;
export type CreateProductBody = Static<typeof CreateProductBody>;
export type CreateCouponBody = Static<typeof CreateCouponBody>;
export type CreateOrderBody = Static<typeof CreateOrderBody>;
export type CreatePaymentBody = Static<typeof CreatePaymentBody>;
