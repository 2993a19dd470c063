/**
 * How a buyer pays through each channel's sandbox, for end-to-end tests: what the client does
 * with the payment's action (open the cashier page, hand the order string to the app, start the
 * StoreKit purchase), then the sandbox's simulate. One driver per channel and method.
 */
import type { TestService } from './service.ts';

export interface Driver {
  channel: string;
  method: string;
  platform: 'web' | 'h5' | 'ios' | 'android' | 'wechat_mini';
  currency: string;
  payer?: Record<string, string>;
  /** The client's part before the buyer pays (may be nothing). */
  open(t: TestService, payment: any, productStoreIds: Record<string, string>): Promise<void>;
  /** Extra fields for POST /sandbox/<channel>/simulate. */
  simulateExtra?(payment: any, productStoreIds: Record<string, string>): Record<string, unknown>;
  /** After a successful simulate: the client's proof of purchase for POST /v1/payments/{id}/confirm, if the channel has one. */
  confirmPayload?(simulateAnswer: any): Record<string, unknown> | null;
}

const json = { 'content-type': 'application/json' };
const nothing = async () => {};

async function mustOk(res: Response, what: string) {
  if (res.status >= 300) throw new Error(`${what}: ${res.status} ${await res.text()}`);
}

export const DRIVERS: Driver[] = [
  { channel: 'alipay', method: 'qr', platform: 'web', currency: 'CNY', open: nothing },
  { channel: 'alipay', method: 'page', platform: 'web', currency: 'CNY', open: async (_t, p) => mustOk(await fetch(p.action.url), 'open cashier') },
  { channel: 'alipay', method: 'wap', platform: 'h5', currency: 'CNY', open: async (_t, p) => mustOk(await fetch(p.action.url), 'open wap cashier') },
  {
    channel: 'alipay', method: 'app', platform: 'android', currency: 'CNY',
    open: async (t, p) => mustOk(await fetch(`${t.url}/sandbox/alipay/app`, { method: 'POST', headers: json, body: JSON.stringify({ order_string: p.action.params.order_string }) }), 'alipay app'),
  },
  { channel: 'wechatpay', method: 'native', platform: 'web', currency: 'CNY', open: nothing },
  { channel: 'wechatpay', method: 'h5', platform: 'h5', currency: 'CNY', payer: { client_ip: '203.0.113.7' }, open: nothing },
  { channel: 'wechatpay', method: 'app', platform: 'android', currency: 'CNY', open: nothing },
  { channel: 'wechatpay', method: 'jsapi', platform: 'wechat_mini', currency: 'CNY', payer: { openid: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o' }, open: nothing },
  {
    channel: 'apple_iap', method: 'in_app', platform: 'ios', currency: 'CNY', open: nothing,
    simulateExtra: (p, ids) => ({ product_id: ids.apple_iap, amount: p.amount, currency: p.currency }),
    confirmPayload: (sim) => (sim?.signed_transaction ? { signed_transaction: sim.signed_transaction } : null),
  },
  { channel: 'stripe', method: 'card', platform: 'web', currency: 'USD', open: nothing },
  { channel: 'stripe', method: 'card', platform: 'h5', currency: 'JPY', open: nothing },
  { channel: 'paypal', method: 'paypal', platform: 'web', currency: 'USD', open: async (_t, p) => mustOk(await fetch(p.action.url), 'open approval page') },
  { channel: 'paypal', method: 'paypal', platform: 'h5', currency: 'EUR', open: async (_t, p) => mustOk(await fetch(p.action.url), 'open approval page') },
  {
    channel: 'google_play', method: 'in_app', platform: 'android', currency: 'CNY',
    // The device: Play Billing starts the purchase with the action's params.
    open: async (t, p) => mustOk(await fetch(`${t.url}/sandbox/google_play/purchase`, { method: 'POST', headers: json, body: JSON.stringify(p.action.params) }), 'play purchase'),
    confirmPayload: (sim) => (sim?.purchase_token ? { purchase_token: sim.purchase_token, product_id: 'course_1' } : null),
  },
];

export async function simulate(t: TestService, d: Driver, payment: any, ids: Record<string, string>, outcome = 'succeeded') {
  const res = await fetch(`${t.url}/sandbox/${d.channel}/simulate`, {
    method: 'POST', headers: json,
    body: JSON.stringify({ channel_reference: payment.channel_reference, outcome, ...(d.simulateExtra?.(payment, ids) ?? {}) }),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}
