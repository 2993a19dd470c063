/** One line of any channel's bill, normalised (ledger.md: "one line shape"). */
export interface BillLine {
  lineNo: number;
  kind: 'payment' | 'refund';
  /**
   * Our trade number at the channel (out_trade_no, Apple's appAccountToken), or '' when the bill
   * does not carry it (a Google Play earnings report): the line is then matched on
   * `channelTransactionId` against the payment's channel_transaction_id.
   */
  channelReference: string;
  /** The channel's id of the payment (payment lines) or of the refund as we store it (refund lines). */
  channelTransactionId?: string;
  /** Our refund number (out_request_no / out_refund_no), for refund lines; without it a refund line is matched on channelTransactionId = our channel_refund_id. */
  refundReference?: string;
  /** Positive minor units: what was paid, or what was refunded. */
  amount: bigint;
  /** Positive minor units: the channel's fee on this line (returned fee on a refund line); absent when the bill does not say (then no fee check). */
  fee?: bigint;
  currency: string;
  occurredAt?: Date;
}

/** The file is not a bill of the named channel: answered as a 400 that says why. */
export class BillFormatError extends Error {
  override name = 'BillFormatError';
}

export const MAX_BILL_LINES = 5_000_000;
