/**
 * Operating errors that reach a client, in the API's error shape (api.md):
 * { error: { type, code, message, param? } }.
 */
export type ApiErrorType = 'invalid_request_error' | 'authentication_error' | 'payment_error' | 'idempotency_error' | 'api_error';

export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly statusCode: number,
    readonly type: ApiErrorType,
    readonly code: string,
    message: string,
    readonly param?: string,
    readonly extra?: Record<string, unknown>,
  ) {
    super(message);
  }

  toJSON() {
    return {
      error: {
        type: this.type,
        code: this.code,
        message: this.message,
        ...(this.param ? { param: this.param } : {}),
        ...(this.extra ?? {}),
      },
    };
  }
}

export const invalid = (code: string, message: string, param?: string) => new ApiError(400, 'invalid_request_error', code, message, param);
/** An unknown id: 404 when it named the URL's resource, 400 when it was a request parameter. */
export const notFound = (what: string, id: string, param?: string) =>
  new ApiError(param ? 400 : 404, 'invalid_request_error', 'resource_missing', `No such ${what}: '${id}'`, param);
export const conflict = (code: string, message: string) => new ApiError(409, 'invalid_request_error', code, message);
