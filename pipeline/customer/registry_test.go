package customer

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
)

const testLoop = "default/acme"

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func hashHex(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// entryJSON is a token entry as the Secret holds it.
func entryJSON(customer, token string, expires time.Time) []byte {
	if expires.IsZero() {
		return fmt.Appendf(nil, `{"customer":%q,"sha256":%q}`, customer, hashHex(token))
	}
	return fmt.Appendf(nil, `{"customer":%q,"sha256":%q,"expires":%q}`, customer, hashHex(token), expires.Format(time.RFC3339))
}

func mustParse(t testing.TB, data map[string][]byte) *Registry {
	t.Helper()
	reg, errs := Parse(testLoop, data)
	if len(errs) > 0 {
		t.Fatalf("Parse: %v", errs)
	}
	return reg
}

func TestParseLoadsValidEntries(t *testing.T) {
	exp := t0.Add(time.Hour)
	reg := mustParse(t, map[string][]byte{
		"acme-1":   entryJSON("acme", "tok-acme", time.Time{}),
		"globex-1": entryJSON("globex", "tok-globex", exp),
	})
	if reg.Len() != 2 || reg.Loop() != testLoop || reg.SignedTokens() {
		t.Fatalf("Len %d, Loop %q, SignedTokens %v; want 2, %q, false", reg.Len(), reg.Loop(), reg.SignedTokens(), testLoop)
	}
	for token, want := range map[string]Principal{
		"tok-acme":   {Customer: "acme", TokenID: "acme-1"},
		"tok-globex": {Customer: "globex", TokenID: "globex-1", Expires: exp},
	} {
		p, err := reg.Authenticate(token, t0)
		if err != nil || p != want {
			t.Errorf("Authenticate(%s) = %+v, %v; want %+v", token, p, err, want)
		}
	}
}

func TestParseReportsMalformedEntriesAndKeepsTheRest(t *testing.T) {
	badHex := strings.Repeat("zz", 32)
	short := hashHex("x")[:62]
	cases := map[string]struct {
		value string
		want  string
	}{
		"not-json":      {`{"customer":`, "not JSON"},
		"not-an-object": {`["acme"]`, "want a JSON object"},
		"no-customer":   {`{"sha256":"` + hashHex("a") + `"}`, "customer is missing"},
		"bad-hex":       {`{"customer":"acme","sha256":"` + badHex + `"}`, "sha256 is not hex"},
		"short-hash":    {`{"customer":"acme","sha256":"` + short + `"}`, "sha256 has 62 characters"},
		"no-hash":       {`{"customer":"acme"}`, "sha256 has 0 characters"},
		"hash-number":   {`{"customer":"acme","sha256":12}`, "field sha256"},
		"typo":          {`{"customer":"acme","sha265":"` + hashHex("b") + `"}`, `unknown field "sha265"`},
		"bad-expiry":    {`{"customer":"acme","sha256":"` + hashHex("c") + `","expires":"tomorrow"}`, "not an RFC 3339 time"},
		"long-customer": {`{"customer":"` + strings.Repeat("a", 257) + `","sha256":"` + hashHex("d") + `"}`, "at most 256"},
		"control":       {`{"customer":"ac\u0001me","sha256":"` + hashHex("e") + `"}`, "control characters"},
		"trailing":      {`{"customer":"acme","sha256":"` + hashHex("f") + `"} {}`, "trailing data"},
	}
	data := map[string][]byte{"good": entryJSON("acme", "tok-good", time.Time{})}
	for key, c := range cases {
		data[key] = []byte(c.value)
	}
	reg, errs := Parse(testLoop, data)
	if len(errs) != len(cases) {
		t.Fatalf("got %d errors, want %d: %v", len(errs), len(cases), errs)
	}
	for key, c := range cases {
		var found error
		for _, err := range errs {
			if strings.HasPrefix(err.Error(), fmt.Sprintf("token %q: ", key)) {
				found = err
			}
		}
		if found == nil {
			t.Errorf("no error names entry %q", key)
			continue
		}
		if !strings.Contains(found.Error(), c.want) {
			t.Errorf("entry %q: error %q does not say %q", key, found, c.want)
		}
		for _, secret := range []string{badHex, short, hashHex("a"), hashHex("b"), hashHex("c"), hashHex("f")} {
			if strings.Contains(found.Error(), secret) || strings.Contains(found.Error(), secret[:16]) {
				t.Errorf("entry %q: error %q quotes a hash", key, found)
			}
		}
	}
	if reg.Len() != 1 {
		t.Fatalf("loaded %d entries, want the 1 valid one", reg.Len())
	}
	if p, err := reg.Authenticate("tok-good", t0); err != nil || p.Customer != "acme" {
		t.Errorf("valid entry beside malformed ones: %+v, %v", p, err)
	}
}

func TestParseExpiryIsHonoured(t *testing.T) {
	exp := t0.Add(time.Minute)
	reg := mustParse(t, map[string][]byte{"acme-1": entryJSON("acme", "tok", exp)})
	if _, err := reg.Authenticate("tok", exp.Add(-time.Nanosecond)); err != nil {
		t.Errorf("before expiry: %v", err)
	}
	for _, at := range []time.Time{exp, exp.Add(time.Hour)} {
		if _, err := reg.Authenticate("tok", at); !errors.Is(err, ErrExpired) {
			t.Errorf("at %s: err %v, want ErrExpired", at, err)
		}
	}
}

func TestParseDropsEntriesThatShareAToken(t *testing.T) {
	reg, errs := Parse(testLoop, map[string][]byte{
		"a": entryJSON("acme", "same", time.Time{}),
		"b": entryJSON("globex", "same", time.Time{}),
		"c": entryJSON("initech", "same", time.Time{}),
		"d": entryJSON("acme", "other", time.Time{}),
	})
	if len(errs) != 2 || !strings.Contains(errs[0].Error(), `"a"`) || !strings.Contains(errs[0].Error(), `"b"`) || !strings.Contains(errs[1].Error(), `"c"`) {
		t.Fatalf("errors %v; want a and b, then c, named", errs)
	}
	if _, err := reg.Authenticate("same", t0); !errors.Is(err, ErrUnknown) {
		t.Errorf("a token two entries claim authenticated: %v", err)
	}
	if _, err := reg.Authenticate("other", t0); err != nil {
		t.Errorf("the other entry: %v", err)
	}
}

func TestParseSigningKeysAndRevokedList(t *testing.T) {
	key := []byte(strings.Repeat("k", 32))
	cases := []struct {
		name       string
		data       map[string][]byte
		wantErr    string
		wantSigned bool
	}{
		{"key", map[string][]byte{KeySigningKey: key}, "", true},
		{"short key", map[string][]byte{KeySigningKey: key[:31]}, "signing-key: 31 bytes", false},
		{"previous alone", map[string][]byte{KeySigningKeyPrevious: key}, "without a valid signing-key", false},
		{"short previous", map[string][]byte{KeySigningKey: key, KeySigningKeyPrevious: key[:5]}, "signing-key-previous: 5 bytes", true},
		{"revoked not JSON", map[string][]byte{KeySigningKey: key, KeyRevoked: []byte(`["a"`)}, "every signed token is refused", false},
		{"revoked not a list", map[string][]byte{KeySigningKey: key, KeyRevoked: []byte(`{}`)}, "want a JSON array of strings", false},
		{"revoked odd id", map[string][]byte{KeySigningKey: key, KeyRevoked: []byte(`["x", "` + strings.Repeat("0", 32) + `"]`)}, `"x" is not a token id`, true},
	}
	for _, c := range cases {
		reg, errs := Parse(testLoop, c.data)
		joined := errors.Join(errs...)
		switch {
		case c.wantErr == "" && joined != nil:
			t.Errorf("%s: %v", c.name, joined)
		case c.wantErr != "" && (joined == nil || !strings.Contains(joined.Error(), c.wantErr)):
			t.Errorf("%s: errors %v, want %q", c.name, joined, c.wantErr)
		}
		if reg.SignedTokens() != c.wantSigned {
			t.Errorf("%s: SignedTokens %v, want %v", c.name, reg.SignedTokens(), c.wantSigned)
		}
		if strings.Contains(fmt.Sprint(joined), string(key)) {
			t.Errorf("%s: error quotes the key", c.name)
		}
	}
}

func TestAuthenticateLongLivedTokens(t *testing.T) {
	long := strings.Repeat("L", MaxTokenBytes)
	reg := mustParse(t, map[string][]byte{
		"acme-1":  entryJSON("acme", "s3cret-Token_1", time.Time{}),
		"old":     entryJSON("acme", "old-token", t0.Add(-time.Second)),
		"longest": entryJSON("acme", long, time.Time{}),
		// Entries whose hashes are those of tokens refused before any lookup: they must
		// stay refused, which shows the lookup is never reached.
		"too-long": entryJSON("acme", long+"L", time.Time{}),
		"spaced":   entryJSON("acme", "s3cret Token", time.Time{}),
		"newline":  entryJSON("acme", "s3cret-Token_1\n", time.Time{}),
	})
	if p, err := reg.Authenticate("s3cret-Token_1", t0); err != nil || p.Customer != "acme" || p.TokenID != "acme-1" {
		t.Errorf("right token: %+v, %v", p, err)
	}
	if _, err := reg.Authenticate(long, t0); err != nil {
		t.Errorf("token of MaxTokenBytes: %v", err)
	}
	for name, c := range map[string]struct {
		token string
		want  error
	}{
		"wrong":         {"s3cret-Token_2", ErrUnknown},
		"prefix":        {"s3cret-Token_", ErrUnknown},
		"expired":       {"old-token", ErrExpired},
		"empty":         {"", ErrMalformed},
		"oversized":     {long + "L", ErrMalformed},
		"inner space":   {"s3cret Token", ErrMalformed},
		"newline":       {"s3cret-Token_1\n", ErrMalformed},
		"leading tab":   {"\ts3cret-Token_1", ErrMalformed},
		"NUL":           {"s3cret\x00", ErrMalformed},
		"DEL":           {"s3cret\x7f", ErrMalformed},
		"non-ASCII":     {"s3crét", ErrMalformed},
		"hash as token": {hashHex("s3cret-Token_1"), ErrUnknown},
	} {
		p, err := reg.Authenticate(c.token, t0)
		if !errors.Is(err, c.want) || p != (Principal{}) {
			t.Errorf("%s: %+v, %v; want %v", name, p, err, c.want)
		}
		if err != nil && c.token != "" && strings.Contains(err.Error(), strings.TrimSpace(c.token)) {
			t.Errorf("%s: error %q quotes the token", name, err)
		}
	}
	var none *Registry
	if _, err := none.Authenticate("s3cret-Token_1", t0); !errors.Is(err, ErrUnknown) {
		t.Errorf("nil registry: %v", err)
	}
}

func TestCustomerBoundIsThePipelines(t *testing.T) {
	if maxCustomerBytes != pipeline.MaxIDLength {
		t.Errorf("maxCustomerBytes %d, pipeline.MaxIDLength %d", maxCustomerBytes, pipeline.MaxIDLength)
	}
}
