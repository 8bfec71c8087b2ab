package pipeline

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// validate checks that a client certificate comes with its key, without reading either.
func (t *TLSConfig) validate() error {
	if t == nil {
		return nil
	}
	hasCert := len(t.CertPEM) > 0 || t.CertFile != ""
	hasKey := len(t.KeyPEM) > 0 || t.KeyFile != ""
	if hasCert != hasKey {
		return errors.New("a client certificate needs its private key, and a key its certificate")
	}
	return nil
}

// Build returns the crypto/tls config: the CA bundle as the only roots when given (the
// system's otherwise), and the client certificate when given. Errors name what is wrong
// with the PEM, never its content. A nil TLSConfig builds nil: no TLS.
func (t *TLSConfig) Build() (*tls.Config, error) {
	if t == nil {
		return nil, nil
	}
	if err := t.validate(); err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify} //nolint:gosec // opt-in, documented as for tests
	ca, err := pemOf(t.CAPEM, t.CAFile, "caFile")
	if err != nil {
		return nil, err
	}
	if len(ca) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ca) {
			return nil, errors.New("CA bundle: no PEM certificate found")
		}
		cfg.RootCAs = pool
	}
	cert, err := pemOf(t.CertPEM, t.CertFile, "certFile")
	if err != nil {
		return nil, err
	}
	key, err := pemOf(t.KeyPEM, t.KeyFile, "keyFile")
	if err != nil {
		return nil, err
	}
	if len(cert) > 0 || len(key) > 0 {
		pair, err := tls.X509KeyPair(cert, key)
		if err != nil {
			// crypto/tls's messages say which part is missing or mismatched, not what it holds.
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// pemOf returns the PEM given in memory, or else the file's content.
func pemOf(inMemory []byte, file, field string) ([]byte, error) {
	if len(inMemory) > 0 || file == "" {
		return inMemory, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return b, nil
}

// CheckTLS reports whether the TLS config's CA bundle and client certificate parse, for
// callers that want to refuse bad PEM before a worker starts. Its errors never carry the
// PEM.
func CheckTLS(t *TLSConfig) error {
	_, err := t.Build()
	return err
}
