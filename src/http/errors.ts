/** One error handler: every failure leaves in the API's error shape. */
import type { FastifyError, FastifyInstance } from 'fastify';
import { ApiError } from '../domain/errors.ts';

interface AjvLikeError { instancePath?: string; keyword?: string; params?: Record<string, unknown>; message?: string }

function paramOf(e: AjvLikeError): string | undefined {
  const path = (e.instancePath ?? '').replace(/^\//, '').split('/').filter(Boolean);
  const extra = (e.params?.missingProperty ?? e.params?.additionalProperty) as string | undefined;
  if (extra) path.push(extra);
  if (path.length === 0) return undefined;
  return path.map((seg, i) => (/^\d+$/.test(seg) ? `[${seg}]` : i === 0 ? seg : `.${seg}`)).join('');
}

function validationError(err: FastifyError): ApiError {
  const first = (err.validation?.[0] ?? {}) as AjvLikeError;
  const param = paramOf(first);
  const code = first.keyword === 'required' ? 'parameter_missing' : first.keyword === 'additionalProperties' ? 'parameter_unknown' : 'parameter_invalid';
  const where = err.validationContext ?? 'body';
  const message =
    first.keyword === 'required' ? `Missing required parameter: ${param}` :
    first.keyword === 'additionalProperties' ? `Received unknown parameter: ${param}` :
    `Invalid ${where} parameter${param ? ` ${param}` : ''}: ${first.message ?? 'invalid'}`;
  return new ApiError(400, 'invalid_request_error', code, message, param);
}

export function toApiError(err: FastifyError): ApiError {
  if (err instanceof ApiError) return err;
  if (err.validation) return validationError(err);
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ApiError(413, 'invalid_request_error', 'body_too_large', 'The request body is too large');
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new ApiError(400, 'invalid_request_error', 'invalid_json', 'The request body is not valid JSON');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new ApiError(400, 'invalid_request_error', 'unsupported_media_type', 'Send JSON with Content-Type: application/json');
  }
  if (err.statusCode === 429) return new ApiError(429, 'invalid_request_error', 'rate_limited', 'Too many requests');
  if (err instanceof SyntaxError || err.statusCode === 400) {
    return new ApiError(400, 'invalid_request_error', 'invalid_request', err.message);
  }
  return new ApiError(500, 'api_error', 'internal_error', 'An internal error occurred');
}

export function installErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError, req, reply) => {
    const apiError = toApiError(err);
    if (apiError.statusCode >= 500) req.log.error({ err }, 'unhandled error');
    reply.code(apiError.statusCode).type('application/json').send(apiError.toJSON());
  });
  app.setNotFoundHandler((req, reply) => {
    const e = new ApiError(404, 'invalid_request_error', 'resource_missing', `Unrecognized request URL (${req.method}: ${req.url.split('?')[0]})`);
    reply.code(404).send(e.toJSON());
  });
}
