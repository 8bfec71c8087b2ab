package customer

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

var (
	signingKey  = []byte("0123456789abcdef0123456789abcdef-current")
	previousKey = []byte("fedcba9876543210fedcba9876543210-previous")
)

func signedRegistry(t testing.TB, extra map[string][]byte) *Registry {
	t.Helper()
	data := map[string][]byte{KeySigningKey: signingKey}
	for k, v := range extra {
		data[k] = v
	}
	return mustParse(t, data)
}

func mint(t testing.TB, key []byte, loop, customer string, ttl time.Duration, now time.Time) (string, string) {
	t.Helper()
	token, id, err := Mint(key, loop, customer, ttl, now)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	return token, id
}

// forge signs a payload of our choosing with key, as a minter that ignores Mint's rules would.
func forge(key []byte, c claims) string {
	payload, _ := json.Marshal(c)
	signed := signedPrefix + b64.EncodeToString(payload)
	return signed + "." + b64.EncodeToString(mac(key, signed))
}

func TestSignedTokenAuthenticates(t *testing.T) {
	reg := signedRegistry(t, nil)
	token, id := mint(t, signingKey, testLoop, "acme", time.Hour, t0)
	if !strings.HasPrefix(token, "clt1.") || strings.Count(token, ".") != 2 || !validJTI(id) {
		t.Fatalf("token %q, id %q: not clt1.<payload>.<mac> with a 32-hex id", token, id)
	}
	p, err := reg.Authenticate(token, t0.Add(59*time.Minute))
	want := Principal{Customer: "acme", TokenID: id, Expires: time.Unix(t0.Add(time.Hour).Unix(), 0), signed: true}
	if err != nil || p != want {
		t.Fatalf("Authenticate = %+v, %v; want %+v", p, err, want)
	}
	if _, err := reg.Authenticate(token, t0.Add(time.Hour)); !errors.Is(err, ErrExpired) {
		t.Errorf("at exp: %v, want ErrExpired", err)
	}
	if _, id2 := mint(t, signingKey, testLoop, "acme", time.Hour, t0); id2 == id {
		t.Error("two tokens share an id")
	}
}

func TestSignedTokenRefusals(t *testing.T) {
	token, id := mint(t, signingKey, testLoop, "acme", time.Hour, t0)
	otherLoop, _ := mint(t, signingKey, "default/globex", "acme", time.Hour, t0)
	wrongKey, _ := mint(t, previousKey, testLoop, "acme", time.Hour, t0)
	parts := strings.Split(token, ".")

	// A payload naming another customer, under the original MAC.
	var c claims
	raw, _ := b64.DecodeString(parts[1])
	_ = json.Unmarshal(raw, &c)
	c.Sub = "globex"
	swapped, _ := json.Marshal(c)
	tamperedPayload := parts[0] + "." + b64.EncodeToString(swapped) + "." + parts[2]

	// One character of the MAC changed for another base64 character.
	m := []byte(parts[2])
	m[10] = map[bool]byte{true: 'B', false: 'A'}[m[10] == 'A']
	tamperedMAC := parts[0] + "." + parts[1] + "." + string(m)

	// The MAC's last character carries 2 unused bits; setting one spells the same
	// bytes differently, which a lax decoder would accept.
	last := b64Alphabet[strings.IndexByte(b64Alphabet, m[len(m)-1])|1]
	laxMAC := parts[0] + "." + parts[1] + "." + parts[2][:len(parts[2])-1] + string(last)

	longLived := forge(signingKey, claims{V: 1, Loop: testLoop, Sub: "acme", Iat: t0.Unix(), Exp: t0.Add(MaxSignedTTL + time.Second).Unix(), JTI: id})
	future := forge(signingKey, claims{V: 1, Loop: testLoop, Sub: "acme", Iat: t0.Add(time.Hour).Unix(), Exp: t0.Add(2 * time.Hour).Unix(), JTI: id})
	v2 := forge(signingKey, claims{V: 2, Loop: testLoop, Sub: "acme", Iat: t0.Unix(), Exp: t0.Add(time.Hour).Unix(), JTI: id})
	badJTI := forge(signingKey, claims{V: 1, Loop: testLoop, Sub: "acme", Iat: t0.Unix(), Exp: t0.Add(time.Hour).Unix(), JTI: "revoke-me-not"})
	overflow := forge(signingKey, claims{V: 1, Loop: testLoop, Sub: "acme", Iat: -1 << 62, Exp: 1<<63 - 1, JTI: id})

	reg := signedRegistry(t, nil)
	for name, c := range map[string]struct {
		token string
		want  error
	}{
		"another loop":     {otherLoop, ErrOtherLoop},
		"wrong key":        {wrongKey, ErrUnknown},
		"tampered payload": {tamperedPayload, ErrUnknown},
		"tampered MAC":     {tamperedMAC, ErrUnknown},
		"lax MAC spelling": {laxMAC, ErrMalformed},
		"MAC cut short":    {token[:len(token)-4], ErrMalformed},
		"no MAC":           {parts[0] + "." + parts[1], ErrMalformed},
		"four parts":       {token + ".x", ErrMalformed},
		"prefix only":      {"clt1.", ErrMalformed},
		"lives over 24h":   {longLived, ErrMalformed},
		"issued later":     {future, ErrMalformed},
		"version 2":        {v2, ErrMalformed},
		"odd jti":          {badJTI, ErrMalformed},
		"lifetime wraps":   {overflow, ErrMalformed},
	} {
		if p, err := reg.Authenticate(c.token, t0); !errors.Is(err, c.want) || p != (Principal{}) {
			t.Errorf("%s: %+v, %v; want %v", name, p, err, c.want)
		}
	}
	if _, err := reg.Authenticate(token, t0); err != nil {
		t.Errorf("the untampered token: %v", err)
	}
	if _, err := mustParse(t, nil).Authenticate(token, t0); !errors.Is(err, ErrUnknown) {
		t.Errorf("a registry without a signing key: %v, want ErrUnknown", err)
	}
}

const b64Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

func TestSignedTokenRevoked(t *testing.T) {
	revoked, revokedID := mint(t, signingKey, testLoop, "acme", time.Hour, t0)
	kept, _ := mint(t, signingKey, testLoop, "acme", time.Hour, t0)
	reg := signedRegistry(t, map[string][]byte{KeyRevoked: []byte(`["` + revokedID + `"]`)})
	if _, err := reg.Authenticate(revoked, t0); !errors.Is(err, ErrRevoked) {
		t.Errorf("revoked token: %v, want ErrRevoked", err)
	}
	if _, err := reg.Authenticate(kept, t0); err != nil {
		t.Errorf("token not revoked: %v", err)
	}
	broken, _ := Parse(testLoop, map[string][]byte{KeySigningKey: signingKey, KeyRevoked: []byte(`[`)})
	if _, err := broken.Authenticate(kept, t0); !errors.Is(err, ErrRevoked) {
		t.Errorf("revoked list that does not parse: %v, want ErrRevoked", err)
	}
}

func TestSignedTokenKeyRotation(t *testing.T) {
	old, _ := mint(t, previousKey, testLoop, "acme", time.Hour, t0)
	current, _ := mint(t, signingKey, testLoop, "globex", time.Hour, t0)
	rotating := signedRegistry(t, map[string][]byte{KeySigningKeyPrevious: previousKey})
	for token, customer := range map[string]string{old: "acme", current: "globex"} {
		if p, err := rotating.Authenticate(token, t0); err != nil || p.Customer != customer {
			t.Errorf("during rotation: %+v, %v; want %s", p, err, customer)
		}
	}
	if _, err := signedRegistry(t, nil).Authenticate(old, t0); !errors.Is(err, ErrUnknown) {
		t.Errorf("after rotation, the old key's token: %v, want ErrUnknown", err)
	}
	alone, _ := Parse(testLoop, map[string][]byte{KeySigningKeyPrevious: previousKey})
	if _, err := alone.Authenticate(old, t0); err == nil {
		t.Error("signing-key-previous alone verified a token")
	}
}

func TestMintCapsTTL(t *testing.T) {
	token, _ := mint(t, signingKey, testLoop, "acme", 48*time.Hour, t0)
	var c claims
	raw, _ := b64.DecodeString(strings.Split(token, ".")[1])
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	if c.Exp-c.Iat != int64(MaxSignedTTL/time.Second) || c.Iat != t0.Unix() || c.V != 1 || c.Loop != testLoop || c.Sub != "acme" {
		t.Fatalf("payload %+v: want v 1, loop, sub, iat now and exp 24h later", c)
	}
	reg := signedRegistry(t, nil)
	if _, err := reg.Authenticate(token, t0.Add(MaxSignedTTL-time.Second)); err != nil {
		t.Errorf("a second before 24h: %v", err)
	}
	if _, err := reg.Authenticate(token, t0.Add(MaxSignedTTL)); !errors.Is(err, ErrExpired) {
		t.Errorf("at 24h: %v, want ErrExpired", err)
	}
}

func TestMintRefuses(t *testing.T) {
	for name, c := range map[string]struct {
		key            []byte
		loop, customer string
		ttl            time.Duration
	}{
		"short key":    {signingKey[:31], testLoop, "acme", time.Hour},
		"no loop":      {signingKey, "", "acme", time.Hour},
		"no customer":  {signingKey, testLoop, "", time.Hour},
		"control char": {signingKey, testLoop, "ac\nme", time.Hour},
		"zero ttl":     {signingKey, testLoop, "acme", 0},
		"sub-second":   {signingKey, testLoop, "acme", time.Millisecond},
	} {
		if token, id, err := Mint(c.key, c.loop, c.customer, c.ttl, t0); err == nil || token != "" || id != "" {
			t.Errorf("%s: minted %q, %q, %v", name, token, id, err)
		}
	}
}
