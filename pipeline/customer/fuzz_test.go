package customer

import (
	"testing"
	"time"
)

// FuzzAuthenticate: no input panics Authenticate, and none authenticates but the
// tokens the registry was made to accept.
func FuzzAuthenticate(f *testing.F) {
	// The signed tokens are forged with a fixed id rather than minted: the fuzzing
	// workers each run this function, and must agree on which tokens are valid.
	c := claims{V: 1, Loop: testLoop, Sub: "acme", Iat: t0.Unix(), Exp: t0.Add(time.Hour).Unix(), JTI: "0123456789abcdef0123456789abcdef"}
	signed, old := forge(signingKey, c), forge(previousKey, c)
	c.Loop = "default/globex"
	other := forge(signingKey, c)
	reg := signedRegistry(f, map[string][]byte{
		KeySigningKeyPrevious: previousKey,
		"acme-1":              entryJSON("acme", "long-lived-token", time.Time{}),
	})
	valid := map[string]bool{signed: true, old: true, "long-lived-token": true}
	for _, seed := range []string{signed, old, other, "long-lived-token", "", "clt1.", "clt1..", "clt1.e30.", signed[:len(signed)-1], signed + "=", "clt1.\x00.x"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, token string) {
		p, err := reg.Authenticate(token, t0)
		if err == nil && !valid[token] {
			t.Fatalf("%q authenticated as %+v", token, p)
		}
		if err != nil && p != (Principal{}) {
			t.Fatalf("%q refused (%v) with a principal %+v", token, err, p)
		}
	})
}
