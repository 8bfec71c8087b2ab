// Package connect opens the connections every plane needs: ClickHouse over the native
// protocol (TLS, several addresses, each node of a cluster) and Kafka (TLS, SASL), runs
// DDL on a cluster and waits for its queue, and reads topics whole (consent messages).
package connect

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// OpenClickHouse connects over the native protocol, with TLS when cfg.TLS is set. It sets
// no default database, so that the loop's database can be created through the same
// connection; all SQL CustomerLoop writes names its database explicitly.
//
// With Failover addresses, every connection the pool opens goes to the first of Addr and
// Failover that accepts it, in order; an error names each address's failure. This is
// connection failover only: a server that stops breaks the connections it holds (the
// query on them fails and is retried by its caller, on a new connection to the next
// address), and connections stay where they are when an earlier address comes back,
// until they are closed. The addresses must serve the same data: replicas of one cluster
// or endpoints of one service. Nothing is replicated between them.
func OpenClickHouse(ctx context.Context, cfg pipeline.ClickHouseConfig) (driver.Conn, error) {
	addrs := cfg.Addresses()
	where := "clickhouse " + strings.Join(addrs, ",")
	tlsCfg, err := cfg.TLS.Build()
	if err != nil {
		return nil, fmt.Errorf("%s: TLS: %w", where, err)
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:         addrs,
		TLS:          tlsCfg,
		DialStrategy: dialInOrder,
		Auth:         clickhouse.Auth{Username: cfg.Username, Password: cfg.Password},
		// Insert big batches; long inserts are expected.
		DialTimeout:  5 * time.Second,
		ReadTimeout:  5 * time.Minute,
		MaxOpenConns: 4,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := conn.Ping(pctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return conn, nil
}

// dialInOrder opens a connection to the first address that accepts it, as clickhouse-go's
// default strategy with ConnOpenInOrder does, but keeps every address's error instead of
// the last one only, with a hint for the usual TLS mistakes.
func dialInOrder(ctx context.Context, _ int, opt *clickhouse.Options, dial clickhouse.Dial) (clickhouse.DialResult, error) {
	var errs dialErrors
	for _, addr := range opt.Addr {
		r, err := dial(ctx, addr, opt)
		if err == nil {
			return r, nil
		}
		err = withTLSHint(err, opt.TLS != nil)
		if len(opt.Addr) > 1 {
			err = fmt.Errorf("%s: %w", addr, err)
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return clickhouse.DialResult{}, clickhouse.ErrAcquireConnNoAddress
	}
	return clickhouse.DialResult{}, errs
}

// dialErrors are the failures of each address tried, on one line.
type dialErrors []error

func (e dialErrors) Error() string {
	parts := make([]string, len(e))
	for i, err := range e {
		parts[i] = err.Error()
	}
	return strings.Join(parts, "; ")
}

func (e dialErrors) Unwrap() []error { return e }

// withTLSHint adds what to check to the TLS failures people meet when they set TLS up.
func withTLSHint(err error, useTLS bool) error {
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		record    tls.RecordHeaderError
	)
	// A server's TLS alert reaches the client as text only (crypto/tls keeps its type
	// unexported).
	msg := err.Error()
	var hint string
	switch {
	case errors.As(err, &unknownCA):
		hint = "the server's certificate is not signed by the CA given, or by the system's roots when none is"
	case errors.As(err, &hostname):
		hint = "the server's certificate is not for this name: set the TLS server name to one it carries"
	case errors.As(err, &record) && useTLS:
		hint = "the server does not speak TLS on this port: use its secure native port (tcp_port_secure, usually 9440)"
	case strings.Contains(msg, "remote error: tls: certificate required"):
		hint = "the server asks for a client certificate"
	case strings.Contains(msg, "remote error: tls: unknown certificate authority"),
		strings.Contains(msg, "remote error: tls: bad certificate"):
		hint = "the server refused the client certificate: its CA does not sign it"
	case useTLS && errors.Is(err, syscall.ECONNRESET):
		// With TLS 1.3 the client finishes its handshake before the server checks the
		// client's certificate, and the server's refusal may come as a reset.
		hint = "the server closed the connection after the TLS handshake: it may ask for a client certificate, or refuse the one given"
	case !useTLS && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)):
		hint = "if this is a secure native port, the connection needs TLS"
	}
	if hint == "" {
		return err
	}
	return fmt.Errorf("%w (%s)", err, hint)
}

// How long ApplySchema waits, in seconds (distributed_ddl_task_timeout, 180 by default),
// for every host of a cluster to run an ON CLUSTER statement. A host that is down would
// otherwise hold every reconcile 180 s per statement, although it needs nobody to wait:
// ClickHouse's distributed DDL queue keeps the statements and each host runs them in
// order when it is back. So the first statement that some host has not run waits
// DDLTimeout, and once one has, the rest wait only DDLPendingTimeout each (enough for
// the hosts that are up, which run them at once).
const (
	DDLTimeout        = 15
	DDLPendingTimeout = 2
)

// permanentError reports whether a ClickHouse error will fail again however often it is
// retried (a schema mismatch, bad SQL), as opposed to a network or server hiccup.
func permanentError(err error) bool {
	var ex *clickhouse.Exception
	if !errors.As(err, &ex) {
		return false
	}
	switch ex.Code {
	case 16, // NO_SUCH_COLUMN_IN_TABLE
		44, // ILLEGAL_COLUMN
		47, // UNKNOWN_IDENTIFIER
		53, // TYPE_MISMATCH
		60, // UNKNOWN_TABLE
		62, // SYNTAX_ERROR
		81: // UNKNOWN_DATABASE
		return true
	}
	return false
}
