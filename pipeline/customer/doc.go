// Package customer authenticates the callers of the customer channel: the API on which a
// customer reads their own statement and submits revised plans. It parses the tokens of
// a loop from a Secret's data (Parse), checks a presented bearer token against them
// (Registry.Authenticate), mints signed short-lived tokens for a vendor's portal (Mint),
// limits the rate of each token and of each client that fails to authenticate
// (Limiter), and refuses requests in three words and nothing more (Authenticated).
//
// # Tokens
//
// The Secret's data holds one entry per long-lived token, keyed by the token's id:
//
//	<token-id>: {"customer": "<customer id>", "sha256": "<64 hex characters>", "expires": "<RFC 3339>"}
//
// customer is the customer's id in clear, as the customer's messages carry it; sha256
// is the hex SHA-256 of the token, so that the token itself is stored nowhere; expires
// is optional, and the token is refused from that instant on. An entry that does not
// parse is reported with its key (never its hash) and left out; the other entries load.
// Two entries with the same hash are both left out, since a token must name one customer.
//
// Three keys are reserved:
//
//   - signing-key, at least 32 bytes, enables signed tokens (below);
//   - signing-key-previous, at least 32 bytes, verifies signed tokens too while a
//     rotation is under way: mint with the new key, keep the old one here for 24 hours;
//   - revoked is a JSON array of the ids (jti) of signed tokens that are refused before
//     they expire. When it does not parse, every signed token is refused until it does.
//
// # Signed tokens
//
// A signed token is minted by whoever holds the signing key, for one customer of one
// loop, for at most 24 hours, and needs no change of the Secret:
//
//	clt1.<base64url(payload)>.<base64url(HMAC-SHA256(key, "clt1." + base64url(payload)))>
//
// where the payload is {"v":1,"loop":…,"sub":<customer>,"exp":<unix>,"iat":<unix>,"jti":<32 hex>},
// base64url has no padding, and jti is 16 random bytes that name the token in the
// revoked list. A token of another loop is refused even when the loops share a key.
//
// # Refusals
//
// Every refusal of the customer channel is one of three, whatever its cause, so that a
// caller learns nothing of the tokens that exist, expired or were revoked:
//
//   - 401 with body "unauthorized\n" and WWW-Authenticate: Bearer;
//   - 403 with body "forbidden\n", for an authenticated customer the channel does not
//     serve (see Allow);
//   - 429 with body "too many requests\n" and Retry-After in seconds.
//
// Nothing that is logged contains a token or a hash.
package customer
