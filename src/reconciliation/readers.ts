/** Which bill formats Knowpay reads, per channel. */
import type { ChannelName } from '../channels/types.ts';
import { readAlipayBill } from '../channels/alipay/bill.ts';
import { readWechatpayBill } from '../channels/wechatpay/bill.ts';
import { readStripeBill } from '../channels/stripe/bill.ts';
import { readPaypalBill } from '../channels/paypal/bill.ts';
import { readAppleBill } from '../channels/apple/bill.ts';
import { readGooglePlayBill } from '../channels/google/bill.ts';
import type { BillReader } from './reconcile.ts';

export const BILL_READERS: Partial<Record<ChannelName, BillReader>> = {
  alipay: readAlipayBill,
  wechatpay: readWechatpayBill,
  stripe: readStripeBill,
  paypal: readPaypalBill,
  apple_iap: readAppleBill,
  google_play: readGooglePlayBill,
};
