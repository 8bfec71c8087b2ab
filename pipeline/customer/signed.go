package customer

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

const (
	// signedPrefix starts every signed token and is part of what its MAC covers.
	signedPrefix = "clt1."
	// signedVersion is the payload's v.
	signedVersion = 1
	// MaxSignedTTL is the longest a signed token lives; Mint caps its ttl to it.
	MaxSignedTTL = 24 * time.Hour
	// MinSigningKeyBytes is the shortest signing key accepted.
	MinSigningKeyBytes = 32
	// maxClockSkew is how far in the future a token's iat may be, for a minter whose
	// clock runs ahead of ours.
	maxClockSkew = time.Minute
)

// b64 is base64url without padding, strict so that a token has one spelling only.
var b64 = base64.RawURLEncoding.Strict()

// claims is a signed token's payload.
type claims struct {
	V    int    `json:"v"`
	Loop string `json:"loop"`
	Sub  string `json:"sub"`
	Exp  int64  `json:"exp"`
	Iat  int64  `json:"iat"`
	JTI  string `json:"jti"`
}

// Mint returns a signed token for customer of loop, valid from now for ttl (at most
// MaxSignedTTL: a longer ttl is capped), and its id, which the Secret's revoked list
// names to refuse it early. key is the loop's signing key (at least
// MinSigningKeyBytes).
func Mint(key []byte, loop, customer string, ttl time.Duration, now time.Time) (token string, id string, err error) {
	if err := checkSigningKey(key); err != nil {
		return "", "", fmt.Errorf("minting a token: signing key: %w", err)
	}
	if loop == "" {
		return "", "", errors.New("minting a token: loop is missing")
	}
	if err := checkCustomer(customer); err != nil {
		return "", "", fmt.Errorf("minting a token: %w", err)
	}
	if ttl < time.Second {
		return "", "", fmt.Errorf("minting a token: ttl %s is under a second", ttl)
	}
	ttl = min(ttl, MaxSignedTTL)
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", "", fmt.Errorf("minting a token: reading random bytes: %w", err)
	}
	c := claims{
		V: signedVersion, Loop: loop, Sub: customer,
		// exp is rounded down so that the token lives no longer than ttl.
		Exp: now.Add(ttl).Unix(), Iat: now.Unix(), JTI: hex.EncodeToString(jti[:]),
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", "", fmt.Errorf("minting a token: %w", err)
	}
	signed := signedPrefix + b64.EncodeToString(payload)
	return signed + "." + b64.EncodeToString(mac(key, signed)), c.JTI, nil
}

func mac(key []byte, signed string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(signed))
	return m.Sum(nil)
}

func checkSigningKey(key []byte) error {
	if len(key) < MinSigningKeyBytes {
		return fmt.Errorf("%d bytes, want at least %d", len(key), MinSigningKeyBytes)
	}
	return nil
}

// validJTI reports whether id is spelled as Mint spells a token id.
func validJTI(id string) bool {
	if len(id) != 32 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// authenticateSigned checks a token that starts with signedPrefix: the MAC first, with
// each signing key, so that nothing of an unauthenticated payload is parsed.
func (r *Registry) authenticateSigned(token string, now time.Time) (Principal, error) {
	dot := strings.LastIndexByte(token, '.')
	if dot < len(signedPrefix) || strings.IndexByte(token[len(signedPrefix):dot], '.') >= 0 {
		return Principal{}, fmt.Errorf("%w: not three parts", ErrMalformed)
	}
	signed, sig := token[:dot], token[dot+1:]
	payload64 := signed[len(signedPrefix):]
	got, err := b64.DecodeString(sig)
	if err != nil || len(got) != sha256.Size {
		return Principal{}, fmt.Errorf("%w: MAC does not decode", ErrMalformed)
	}
	verified := false
	for _, k := range r.keys {
		// Every key is tried, so that which one matched does not show in the time taken.
		if hmac.Equal(got, mac(k, signed)) {
			verified = true
		}
	}
	if !verified {
		return Principal{}, ErrUnknown
	}
	payload, err := b64.DecodeString(payload64)
	if err != nil {
		return Principal{}, fmt.Errorf("%w: payload does not decode", ErrMalformed)
	}
	var c claims
	if err := strictJSON(payload, &c); err != nil {
		return Principal{}, fmt.Errorf("%w: payload: %v", ErrMalformed, err)
	}
	// iat and exp are positive before they are subtracted, so the lifetime cannot overflow.
	lifetime := c.Iat > 0 && c.Exp > c.Iat && c.Exp-c.Iat <= int64(MaxSignedTTL/time.Second)
	if c.V != signedVersion || checkCustomer(c.Sub) != nil || !validJTI(c.JTI) || !lifetime {
		return Principal{}, fmt.Errorf("%w: payload is not a version %d token", ErrMalformed, signedVersion)
	}
	if c.Loop != r.loop {
		return Principal{}, fmt.Errorf("%w: token %s", ErrOtherLoop, c.JTI)
	}
	exp := time.Unix(c.Exp, 0)
	if !now.Before(exp) {
		return Principal{}, fmt.Errorf("%w: token %s expired at %s", ErrExpired, c.JTI, exp.UTC().Format(time.RFC3339))
	}
	if time.Unix(c.Iat, 0).After(now.Add(maxClockSkew)) {
		return Principal{}, fmt.Errorf("%w: token %s issued in the future", ErrMalformed, c.JTI)
	}
	if r.revokedBroken || r.revoked[c.JTI] {
		return Principal{}, fmt.Errorf("%w: token %s", ErrRevoked, c.JTI)
	}
	return Principal{Customer: c.Sub, TokenID: c.JTI, Expires: exp, signed: true}, nil
}
