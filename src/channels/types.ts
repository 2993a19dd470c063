/**
 * The one connector interface every payment channel implements. Connectors hold no state: the
 * caller (the payments use case) persists everything. Wire types and status mapping live in each
 * channel's folder; this file is the contract between them and the rest of Knowpay.
 */

export type ChannelName = 'alipay' | 'wechatpay' | 'stripe' | 'paypal' | 'apple_iap' | 'google_play' | 'wallet';
export type ClientPlatform = 'web' | 'h5' | 'ios' | 'android' | 'wechat_mini';

/** What the client must do next to pay (api.md). */
export type NextAction =
  | { type: 'qr_code'; qr_code_url: string }
  | { type: 'redirect'; url: string }
  | { type: 'app'; params: Record<string, unknown> }
  | { type: 'client_secret'; client_secret: string };

export interface PaymentItem {
  productId: string;
  quantity: number;
  /** The product's id in an app store (App Store product id, Google Play product id), when set. */
  storeProductIds: Partial<Record<ChannelName, string>>;
}

export interface CreatePaymentInput {
  /** Our trade number at the channel (Alipay out_trade_no). Unique per payment attempt. */
  channelReference: string;
  /** Our payment id (pay_…), for metadata at channels that keep it. */
  paymentId: string;
  orderId: string;
  customerId: string;
  items: PaymentItem[];
  method: string;
  amountMinor: bigint;
  currency: string;
  subject: string;
  /** Where the channel must send its asynchronous notification. */
  notifyUrl: string;
  returnUrl?: string;
  /** The trade must not be payable after this instant. */
  expiresAt: Date;
  payer?: Record<string, string>;
}

export interface CreatePaymentResult {
  action: NextAction;
  /** The channel's own trade id, when the create call already reports one. */
  channelTransactionId?: string;
}

/**
 * A channel's view of a trade, mapped to our words. Unknown channel states map to 'pending':
 * only an explicit success or failure ends a payment.
 */
export type ChannelTradeState = 'pending' | 'succeeded' | 'failed' | 'closed' | 'not_found';

export interface TradeSnapshot {
  state: ChannelTradeState;
  channelReference: string;
  channelTransactionId?: string;
  /** Amount the channel says the trade is for, in minor units, when it reports one. */
  amountMinor?: bigint;
  currency?: string;
  /** The channel's raw status word, kept for audit and debugging. */
  rawStatus?: string;
  /** The fee the channel reports it kept, in minor units of `currency`; replaces our estimate. */
  feeMinor?: bigint;
}

export interface NotificationInput {
  headers: Record<string, string | string[] | undefined>;
  /** Exact bytes as received: signatures cover bytes, never a re-serialisation. */
  rawBody: Buffer;
  contentType?: string;
}

/** A refund through the channel's own refund API. */
export interface RefundRequest {
  /** The paid trade: our trade number at the channel, and the channel's id for it when known. */
  channelReference: string;
  channelTransactionId?: string;
  /**
   * Our refund number: Alipay out_request_no, WeChat out_refund_no, Stripe/PayPal idempotency key.
   * The same number twice must never refund twice.
   */
  refundReference: string;
  amountMinor: bigint;
  /** The paid trade's total (WeChat's amount.total). */
  paymentAmountMinor: bigint;
  currency: string;
  reason?: string;
  /** Where the channel sends refund notifications, for channels that take it per request. */
  notifyUrl: string;
}

export type RefundState = 'pending' | 'succeeded' | 'failed';

/** A channel's view of a refund, in our words. Unknown statuses map to 'pending'. */
export interface RefundSnapshot {
  state: RefundState;
  /** Our refund number, when the channel echoes it (absent for refunds the store started). */
  refundReference?: string;
  channelRefundId?: string;
  /** The paid trade it belongs to (our trade number). */
  channelReference: string;
  amountMinor?: bigint;
  currency?: string;
  rawStatus?: string;
}

/** A notification whose signature verified, translated to our words (pure mapping). */
export type VerifiedNotification =
  | {
      /** The channel's id for this notification; stable across the channel's retries. */
      eventId: string;
      kind: 'payment';
      trade: TradeSnapshot;
      /**
       * The notification says something happened but the channel must be asked for the outcome
       * (PayPal's CHECKOUT.ORDER.APPROVED needs our capture, which queryPayment performs).
       */
      requery?: boolean;
      /** The merchant/app id the notification is for; must equal our configured one. */
      appId?: string;
    }
  | {
      /**
       * A refund's outcome, or a refund the store started itself (Apple REFUND, Google voided
       * purchase): then refundReference is absent and channelRefundId identifies it.
       */
      eventId: string;
      kind: 'refund';
      refund: RefundSnapshot;
      appId?: string;
    }
  | {
      /** A genuine notification that changes no payment (a test ping, an event type we do not use). */
      eventId: string;
      kind: 'ignored';
      reason: string;
      channelReference?: string;
      appId?: string;
    };

export type VerifyResult =
  | { ok: true; notification: VerifiedNotification }
  | { ok: false; reason: string };

/** How the channel expects an HTTP acknowledgement to look. */
export interface Acknowledgement {
  statusCode: number;
  contentType: string;
  body: string;
}

export interface ChannelConnector {
  readonly channel: ChannelName;
  /** The merchant/app id this connector is configured with (checked against notifications). */
  readonly appId: string;
  /** Methods this connector supports, e.g. alipay: ['qr', 'page', 'wap', 'app']. */
  readonly methods: readonly string[];
  createPayment(input: CreatePaymentInput): Promise<CreatePaymentResult>;
  /** `channelTransactionId`, when the channel reported one at creation (a Stripe pi_ id), lets a connector look the trade up directly. */
  queryPayment(input: { channelReference: string; currency: string; channelTransactionId?: string }): Promise<TradeSnapshot>;
  /** Close an unpaid trade. Resolves to the trade's state after the attempt (closed, or succeeded if it was paid meanwhile). */
  closePayment(input: { channelReference: string; currency: string; channelTransactionId?: string }): Promise<TradeSnapshot>;
  /**
   * How our trade numbers look at this channel: most take our `KP…` trade number; Apple's
   * appAccountToken must be a UUID.
   */
  readonly referenceFormat?: 'trade_number' | 'uuid';
  /**
   * For channels where the client app hands us the channel's proof of purchase (Apple's signed
   * transaction, Google Play's purchase token): verify it with the channel and answer the trade.
   * The payload is the client's, untrusted: the connector verifies everything it relies on.
   */
  confirmPayment?(input: { channelReference: string; currency: string; amountMinor: bigint; payload: Record<string, unknown> }): Promise<TradeSnapshot>;
  /**
   * Refund through the channel's refund API, idempotent per refundReference. Absent for channels
   * where refunds are started by the store, not by the merchant (Apple, Google Play).
   */
  refundPayment?(input: RefundRequest): Promise<RefundSnapshot>;
  queryRefund?(input: { channelReference: string; channelTransactionId?: string; refundReference: string; channelRefundId?: string; currency: string }): Promise<RefundSnapshot>;
  /** Download the channel's bill of one day (its own format) into `destination`, for reconciliation. */
  downloadBill?(input: { billDate: string; destination: string }): Promise<void>;
  /** Signature check plus translation. Never throws for bad input: answers { ok: false, reason }. */
  verifyNotification(input: NotificationInput, currencyOf: (channelReference: string) => Promise<string | null>): Promise<VerifyResult>;
  /** Acknowledgements in the channel's own format. */
  ackSuccess(): Acknowledgement;
  ackFailure(reason: string): Acknowledgement;
}

/**
 * Raised by a connector when a channel call fails at the transport or protocol level (network,
 * bad signature on the response, an error code). `retryable` says whether trying again may help.
 */
export class ChannelError extends Error {
  override name = 'ChannelError';
  constructor(
    message: string,
    readonly channel: ChannelName,
    readonly code: string,
    readonly retryable: boolean,
  ) {
    super(message);
  }
}
