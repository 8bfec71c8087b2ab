package customer

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Reserved keys of the Secret's data.
const (
	// KeySigningKey holds the key that signs and verifies signed tokens.
	KeySigningKey = "signing-key"
	// KeySigningKeyPrevious holds the key signed tokens were minted with before the
	// last rotation; it verifies, and never signs.
	KeySigningKeyPrevious = "signing-key-previous"
	// KeyRevoked holds the JSON array of the ids of revoked signed tokens.
	KeyRevoked = "revoked"
)

// MaxTokenBytes is the longest token Authenticate looks at; a longer one is refused on
// its length alone.
const MaxTokenBytes = 4096

// maxCustomerBytes bounds a customer id as the pipeline bounds it (pipeline.MaxIDLength,
// which this package does not import: it would bring the ClickHouse driver along).
const maxCustomerBytes = 256

// Why Authenticate refuses a token. The customer channel answers all of them with the
// same 401; they are for tests and for the operator's logs.
var (
	// ErrMalformed: the token is empty, too long or holds whitespace, control or
	// non-ASCII characters, or a signed token does not decode.
	ErrMalformed = errors.New("malformed token")
	// ErrUnknown: no entry of the registry has the token's hash, or a signed token's
	// MAC matches none of the signing keys.
	ErrUnknown = errors.New("unknown token")
	// ErrExpired: the token's expiry has passed.
	ErrExpired = errors.New("expired token")
	// ErrRevoked: the signed token's id is in the revoked list, or the list does not parse.
	ErrRevoked = errors.New("revoked token")
	// ErrOtherLoop: the signed token was minted for another loop.
	ErrOtherLoop = errors.New("token of another loop")
)

// Principal is who an authenticated request acts for.
type Principal struct {
	// Customer is the customer's id in clear, as the customer's messages carry it.
	Customer string
	// TokenID names the token: its key in the Secret, or a signed token's jti.
	TokenID string
	// Expires is when the token stops being accepted; zero when it does not expire.
	Expires time.Time

	// signed tells a jti from a Secret key of the same spelling, for the rate limits.
	signed bool
}

// limitKey is the key of the principal's token in the rate limiter.
func (p Principal) limitKey() string {
	if p.signed {
		return "signed/" + p.TokenID
	}
	return "secret/" + p.TokenID
}

// entry is one long-lived token of the Secret.
type entry struct {
	id       string
	customer string
	hash     [sha256.Size]byte
	expires  time.Time
}

// Registry is the tokens of one loop, parsed from its Secret. It is read-only once
// parsed and safe for concurrent use; a change of the Secret makes a new Registry
// (see Holder).
type Registry struct {
	loop    string
	byHash  map[[sha256.Size]byte]*entry
	keys    [][]byte // signing keys, current first; empty disables signed tokens
	revoked map[string]bool
	// revokedBroken refuses every signed token when the revoked list does not parse.
	revokedBroken bool
}

// Parse reads the tokens of loop from a Secret's data (see the package documentation).
// It returns the registry of the entries that parse and an error for each entry that
// does not, naming the entry's key; the registry is never nil. loop is the name signed
// tokens must carry, as the caller names the loop (namespace/name, say).
func Parse(loop string, data map[string][]byte) (*Registry, []error) {
	reg := &Registry{loop: loop, byHash: map[[sha256.Size]byte]*entry{}, revoked: map[string]bool{}}
	var errs []error
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	slices.Sort(keys) // errors in a stable order
	dup := map[[sha256.Size]byte]bool{}
	for _, k := range keys {
		v := data[k]
		switch k {
		case KeySigningKey, KeySigningKeyPrevious:
			continue // below, current first
		case KeyRevoked:
			if err := reg.parseRevoked(v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", KeyRevoked, err))
			}
			continue
		}
		e, err := parseEntry(k, v)
		if err != nil {
			errs = append(errs, fmt.Errorf("token %q: %w", k, err))
			continue
		}
		if other, ok := reg.byHash[e.hash]; ok || dup[e.hash] {
			if ok {
				errs = append(errs, fmt.Errorf("token %q: same token as %q; both left out", other.id, k))
				delete(reg.byHash, e.hash)
			} else {
				errs = append(errs, fmt.Errorf("token %q: same token as another entry; left out", k))
			}
			dup[e.hash] = true
			continue
		}
		reg.byHash[e.hash] = e
	}
	errs = append(errs, reg.parseKeys(data)...)
	return reg, errs
}

// parseKeys reads the signing keys: the previous one counts only with a current one.
func (r *Registry) parseKeys(data map[string][]byte) []error {
	var errs []error
	cur, hasCur := data[KeySigningKey]
	prev, hasPrev := data[KeySigningKeyPrevious]
	if hasCur {
		if err := checkSigningKey(cur); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w; signed tokens are refused", KeySigningKey, err))
		} else {
			r.keys = append(r.keys, bytes.Clone(cur))
		}
	}
	if hasPrev {
		switch err := checkSigningKey(prev); {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w; left out", KeySigningKeyPrevious, err))
		case len(r.keys) == 0:
			errs = append(errs, fmt.Errorf("%s without a valid %s: left out", KeySigningKeyPrevious, KeySigningKey))
		default:
			r.keys = append(r.keys, bytes.Clone(prev))
		}
	}
	return errs
}

// tokenJSON is an entry's value as written in the Secret.
type tokenJSON struct {
	Customer string `json:"customer"`
	SHA256   string `json:"sha256"`
	Expires  string `json:"expires,omitempty"`
}

// parseEntry reads one token entry. Its errors never quote the hash.
func parseEntry(key string, v []byte) (*entry, error) {
	if key == "" {
		return nil, errors.New("empty key")
	}
	var t tokenJSON
	if err := strictJSON(v, &t); err != nil {
		return nil, err
	}
	if err := checkCustomer(t.Customer); err != nil {
		return nil, err
	}
	e := &entry{id: key, customer: t.Customer}
	if len(t.SHA256) != hex.EncodedLen(sha256.Size) {
		return nil, fmt.Errorf("sha256 has %d characters, want %d hex characters", len(t.SHA256), hex.EncodedLen(sha256.Size))
	}
	if _, err := hex.Decode(e.hash[:], []byte(t.SHA256)); err != nil {
		return nil, errors.New("sha256 is not hex")
	}
	if t.Expires != "" {
		exp, err := time.Parse(time.RFC3339, t.Expires)
		if err != nil {
			return nil, fmt.Errorf("expires %q is not an RFC 3339 time", t.Expires)
		}
		e.expires = exp
	}
	return e, nil
}

// strictJSON decodes one JSON object into v, refusing unknown fields. Its errors say
// where the JSON is wrong without quoting the text, which may hold a hash.
func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		return errors.New("trailing data after the JSON value")
	}
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &syn):
		return fmt.Errorf("not JSON (at byte %d)", syn.Offset)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return fmt.Errorf("want a JSON %s, got %s", jsonKind(v), typ.Value)
		}
		return fmt.Errorf("field %s: want a %s, got %s", typ.Field, typ.Type, typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "json: "))
	default:
		return errors.New("not JSON")
	}
}

func jsonKind(v any) string {
	if _, ok := v.(*[]string); ok {
		return "array of strings"
	}
	return "object"
}

// checkCustomer refuses an id no customer's message could carry.
func checkCustomer(c string) error {
	switch {
	case c == "":
		return errors.New("customer is missing")
	case len(c) > maxCustomerBytes:
		return fmt.Errorf("customer has %d bytes, at most %d", len(c), maxCustomerBytes)
	case !utf8.ValidString(c) || strings.ContainsFunc(c, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return errors.New("customer holds control characters or invalid UTF-8")
	}
	return nil
}

// parseRevoked reads the revoked list. A list that does not parse refuses every signed
// token; an id that is not a jti is reported and cannot match one anyway.
func (r *Registry) parseRevoked(v []byte) error {
	var ids []string
	if err := strictJSON(v, &ids); err != nil {
		r.revokedBroken = true
		return fmt.Errorf("%w; every signed token is refused until it parses", err)
	}
	var errs []error
	for _, id := range ids {
		if !validJTI(id) {
			errs = append(errs, fmt.Errorf("%q is not a token id (32 lowercase hex characters)", id))
			continue
		}
		r.revoked[id] = true
	}
	return errors.Join(errs...)
}

// Authenticate returns who token acts for at now, or why it is refused (ErrMalformed,
// ErrUnknown, ErrExpired, ErrRevoked, ErrOtherLoop; the error names no secret). A
// token is a long-lived token of the Secret, or a signed token when the registry has a
// signing key. A nil Registry refuses every token.
func (r *Registry) Authenticate(token string, now time.Time) (Principal, error) {
	if len(token) == 0 || len(token) > MaxTokenBytes {
		return Principal{}, fmt.Errorf("%w: %d bytes", ErrMalformed, len(token))
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; c <= ' ' || c >= 0x7f {
			return Principal{}, fmt.Errorf("%w: whitespace, control or non-ASCII character", ErrMalformed)
		}
	}
	if r == nil {
		return Principal{}, ErrUnknown
	}
	if strings.HasPrefix(token, signedPrefix) && len(r.keys) > 0 {
		return r.authenticateSigned(token, now)
	}
	sum := sha256.Sum256([]byte(token))
	e, ok := r.byHash[sum]
	// The map is keyed by the hash, not the token, so its lookup times nothing secret;
	// the compare guards against a lookup that would ever match on less than the hash.
	if !ok || subtle.ConstantTimeCompare(e.hash[:], sum[:]) != 1 {
		return Principal{}, ErrUnknown
	}
	if !e.expires.IsZero() && !now.Before(e.expires) {
		return Principal{}, fmt.Errorf("%w: token %q expired at %s", ErrExpired, e.id, e.expires.Format(time.RFC3339))
	}
	return Principal{Customer: e.customer, TokenID: e.id, Expires: e.expires}, nil
}

// Loop returns the loop name signed tokens must carry.
func (r *Registry) Loop() string { return r.loop }

// Len returns the number of long-lived tokens loaded.
func (r *Registry) Len() int { return len(r.byHash) }

// SignedTokens reports whether the registry accepts signed tokens.
func (r *Registry) SignedTokens() bool { return len(r.keys) > 0 && !r.revokedBroken }
