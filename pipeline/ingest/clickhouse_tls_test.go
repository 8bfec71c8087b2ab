package ingest

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"customerloop.dev/customerloop/test/testkit"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"
)

// tlsClickHouse returns the stack's ClickHouse server with a secure native port
// (hack/clickhouse-tls.sh) and the directory of its certificates.
func tlsClickHouse(t *testing.T) (addr, certs string) {
	t.Helper()
	addr, certs = os.Getenv("CLICKHOUSE_TLS_ADDR"), os.Getenv("CLICKHOUSE_TLS_CERTS")
	if addr == "" || certs == "" {
		if os.Getenv("CUSTOMERLOOP_REQUIRE_STACK") != "" {
			t.Fatal("CLICKHOUSE_TLS_ADDR and CLICKHOUSE_TLS_CERTS are not set; run the tests with make test")
		}
		t.Skip("CLICKHOUSE_TLS_ADDR is not set; make test provisions a TLS server (hack/clickhouse-tls.sh)")
	}
	return addr, certs
}

// privateTLSServer starts a TLS server of this test only through hack/clickhouse-tls.sh,
// in a state directory of its own (so with its own CA), on the given secure port and
// that port - 10 for the plain one. It returns the address, the certificate directory
// and a stop function, which waits for the server to exit and is also run at the end.
func privateTLSServer(t *testing.T, port int, clientCert string) (addr, certs string, stop func()) {
	t.Helper()
	stacktest.ClickhouseAddr(t) // the same skip rules as the shared server
	state := t.TempDir()
	run := func(args ...string) string {
		cmd := exec.Command("../../hack/clickhouse-tls.sh", args...)
		cmd.Env = append(os.Environ(), "CUSTOMERLOOP_STATE="+state, "CLICKHOUSE_TLS_PORT="+strconv.Itoa(port),
			"CLICKHOUSE_TLS_PLAIN_PORT="+strconv.Itoa(port-10), "CLICKHOUSE_TLS_CLIENT_CERT="+clientCert)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("hack/clickhouse-tls.sh %v: %v\n%s", args, err, stderr.String())
		}
		return strings.TrimSpace(string(out))
	}
	addr = run()
	var once sync.Once
	stop = func() { once.Do(func() { run("stop") }) }
	t.Cleanup(stop)
	return addr, run("certs"), stop
}

func readPEM(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tlsTo is the connection to a TLS server with the stack's user, trusting the CA of
// certs.
func tlsTo(t *testing.T, addr, certs string) pipeline.ClickHouseConfig {
	return pipeline.ClickHouseConfig{Addr: addr, Username: os.Getenv("CLICKHOUSE_USER"), Password: os.Getenv("CLICKHOUSE_PASSWORD"),
		TLS: &pipeline.TLSConfig{CAPEM: readPEM(t, certs, "ca.crt")}}
}

// insertAndRead writes three rows through conn into a table of a new database and reads
// their sum back.
func insertAndRead(t *testing.T, conn driver.Conn) {
	t.Helper()
	ctx := context.Background()
	db := stacktest.UniqueName("test_tls_rw")
	if err := conn.Exec(ctx, "CREATE DATABASE "+pipeline.QuoteIdent(db)); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pipeline.QuoteIdent(db)) }()
	table := pipeline.QualifiedTable(db, "t")
	if err := conn.Exec(ctx, "CREATE TABLE "+table+" (x UInt32) ENGINE = Memory"); err != nil {
		t.Fatal(err)
	}
	b, err := conn.PrepareBatch(ctx, "INSERT INTO "+table)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []uint32{1, 20, 300} {
		if err := b.Append(x); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	var sum uint64
	if err := conn.QueryRow(ctx, "SELECT sum(x) FROM "+table).Scan(&sum); err != nil {
		t.Fatal(err)
	}
	if sum != 321 {
		t.Errorf("sum over TLS = %d, want 321", sum)
	}
}

// usageOverTLS produces n usage events, runs a worker on cfg until they are all in the
// raw table (counted through check), and stops it.
func usageOverTLS(t *testing.T, cfg pipeline.Config, check driver.Conn, from, n int, brokers []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var msgs []kafka.Message
	for i := from; i < from+n; i++ {
		msgs = append(msgs, kafka.Message{Key: []byte(fmt.Sprint(i % 5)), Value: fmt.Appendf(nil,
			`{"id":"e%d","customer":{"id":"c%d"},"product":"p","ts":1793449815,"region":"eu","bytes":1,"trial":true}`, i, i%5)})
	}
	stacktest.Produce(t, brokers, cfg.Streams[0].Topic, msgs)
	waitRows(t, ctx, cfg, check, uint64(from+n))
}

// waitRows waits until the usage table holds want rows, each event id once.
func waitRows(t *testing.T, ctx context.Context, cfg pipeline.Config, check driver.Conn, want uint64) {
	t.Helper()
	q := "SELECT count(), uniqExact(event_id) FROM " + pipeline.QualifiedTable(cfg.ClickHouse.Database, cfg.Streams[0].Table())
	testkit.Eventually(t, 60*time.Second, fmt.Sprintf("%d rows, each event once", want), func() (bool, string) {
		var rows, ids uint64
		err := check.QueryRow(ctx, q).Scan(&rows, &ids)
		return err == nil && rows == want && ids == want, fmt.Sprint(rows, " rows ", ids, " ids ", err)
	})
}

// TestClickHouseTLS connects to the stack's 18.16 server on its secure native port: a
// worker ingests through it, the server name and a client certificate are honoured, and
// each usual mistake fails with an error that says what is wrong.
func TestClickHouseTLS(t *testing.T) {
	addr, certs := tlsClickHouse(t)
	base := tlsTo(t, addr, certs)
	ctx := context.Background()

	// A worker's whole path (schema, inserts, ledger, reads) over TLS.
	cfg := stacktest.SampleConfig()
	cfg.Kafka.Brokers = stacktest.StartBroker(t, 2, cfg.Streams[0].Topic, cfg.Streams[1].Topic)
	cfg.Kafka.Group = stacktest.UniqueName("group")
	cfg.ClickHouse = base
	cfg.ClickHouse.Database = stacktest.UniqueName("test_tls")
	cfg.Batch = pipeline.BatchConfig{MaxWait: pipeline.Duration{Duration: 100 * time.Millisecond}}
	ch := ddltest.ApplySchema(t, cfg)
	stop := runWorker(t, ctx, cfg, nil)
	usageOverTLS(t, cfg, ch, 0, 200, cfg.Kafka.Brokers)
	stop()

	otherCA := stacktest.NewTestAuthority(t)
	otherCert, otherKey := otherCA.Issue(t, "customerloop-worker", true)
	plain := os.Getenv("CLICKHOUSE_ADDR")
	for _, tc := range []struct {
		name    string
		mutate  func(*pipeline.ClickHouseConfig)
		wantErr []string // all in the error; none means the connection works
	}{
		{name: "the CA alone", mutate: func(*pipeline.ClickHouseConfig) {}},
		{name: "the name the certificate carries", mutate: func(c *pipeline.ClickHouseConfig) { c.TLS.ServerName = "clickhouse.customerloop.test" }},
		{name: "a client certificate the server's CA signs", mutate: func(c *pipeline.ClickHouseConfig) {
			c.TLS.CertPEM, c.TLS.KeyPEM = readPEM(t, certs, "client.crt"), readPEM(t, certs, "client.key")
		}},
		{name: "a CA that did not sign the server's certificate", mutate: func(c *pipeline.ClickHouseConfig) { c.TLS.CAPEM = otherCA.PEM },
			wantErr: []string{addr, "certificate signed by unknown authority", "not signed by the CA given"}},
		{name: "the system's roots", mutate: func(c *pipeline.ClickHouseConfig) { c.TLS.CAPEM = nil },
			wantErr: []string{"certificate signed by unknown authority"}},
		{name: "a server name the certificate does not carry", mutate: func(c *pipeline.ClickHouseConfig) { c.TLS.ServerName = "other.customerloop.test" },
			wantErr: []string{"not other.customerloop.test", "set the TLS server name"}},
		// The server asks every client for a certificate and checks one presented: that
		// it refuses this one shows the client presents it. The refusal comes as an
		// alert or, when the client writes first (TLS 1.3), as a reset: both explained.
		{name: "a client certificate of another CA", mutate: func(c *pipeline.ClickHouseConfig) { c.TLS.CertPEM, c.TLS.KeyPEM = otherCert, otherKey },
			wantErr: []string{"client certificate"}},
		{name: "a client certificate with another key", mutate: func(c *pipeline.ClickHouseConfig) {
			c.TLS.CertPEM, c.TLS.KeyPEM = readPEM(t, certs, "client.crt"), otherKey
		}, wantErr: []string{"client certificate", "private key does not match public key"}},
		{name: "a CA bundle that is no PEM", mutate: func(c *pipeline.ClickHouseConfig) { c.TLS.CAPEM = []byte("not a certificate") },
			wantErr: []string{"CA bundle: no PEM certificate found"}},
		{name: "TLS to a plain native port", mutate: func(c *pipeline.ClickHouseConfig) { c.Addr = plain },
			wantErr: []string{"does not speak TLS on this port"}},
		{name: "no TLS to the secure port", mutate: func(c *pipeline.ClickHouseConfig) { c.TLS = nil },
			wantErr: []string{addr, "the connection needs TLS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			tlsCopy := *base.TLS
			c.TLS = &tlsCopy
			tc.mutate(&c)
			cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			conn, err := connect.OpenClickHouse(cctx, c)
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				insertAndRead(t, conn)
				return
			}
			if err == nil {
				conn.Close()
				t.Fatalf("connected; want an error with %q", tc.wantErr)
			}
			t.Logf("refused: %v", err)
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestClickHouseTLSClientCertRequired runs a server that demands a client certificate
// (verificationMode strict): with the certificate its CA signs the connection inserts
// and reads, without one it fails and says why.
func TestClickHouseTLSClientCertRequired(t *testing.T) {
	addr, certs, _ := privateTLSServer(t, 19441, "require")
	c := tlsTo(t, addr, certs)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The server's alert or, when the client writes first, its reset: either is explained.
	if _, err := connect.OpenClickHouse(ctx, c); err == nil || !strings.Contains(err.Error(), "client certificate") {
		t.Errorf("without a client certificate: %v; want the server's refusal, explained", err)
	}
	c.TLS.CertPEM, c.TLS.KeyPEM = readPEM(t, certs, "client.crt"), readPEM(t, certs, "client.key")
	conn, err := connect.OpenClickHouse(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	insertAndRead(t, conn)
}

// TestClickHouseFailoverStoppedServer: with two addresses, connections go to the first
// while it answers; once its server is stopped the same config reaches the second, and a
// worker ingests there. When none answers, the error names every address.
func TestClickHouseFailoverStoppedServer(t *testing.T) {
	addrA, certsA := tlsClickHouse(t)
	addrB, certsB, stopB := privateTLSServer(t, 19443, "optional")
	ctx := context.Background()
	both := tlsTo(t, addrB, certsB)
	both.TLS.CAPEM = append(append([]byte(nil), readPEM(t, certsA, "ca.crt")...), readPEM(t, certsB, "ca.crt")...)
	both.Failover = []string{addrA}

	// A database only B has tells which server a connection reached.
	marker := stacktest.UniqueName("failover_marker")
	onB, err := connect.OpenClickHouse(ctx, tlsTo(t, addrB, certsB))
	if err != nil {
		t.Fatal(err)
	}
	if err := onB.Exec(ctx, "CREATE DATABASE "+pipeline.QuoteIdent(marker)); err != nil {
		t.Fatal(err)
	}
	onB.Close()
	reached := func(conn driver.Conn) string {
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM system.databases WHERE name = ?", marker).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			return "B"
		}
		return "A"
	}
	conn, err := connect.OpenClickHouse(ctx, both)
	if err != nil {
		t.Fatal(err)
	}
	if got := reached(conn); got != "B" {
		t.Errorf("with both servers up the connection reached %s, want B, the first address", got)
	}
	conn.Close()

	stopB()
	cfg := stacktest.SampleConfig()
	cfg.Kafka.Brokers = stacktest.StartBroker(t, 2, cfg.Streams[0].Topic, cfg.Streams[1].Topic)
	cfg.Kafka.Group = stacktest.UniqueName("group")
	cfg.ClickHouse = both
	cfg.ClickHouse.Database = stacktest.UniqueName("test_failover")
	cfg.Batch = pipeline.BatchConfig{MaxWait: pipeline.Duration{Duration: 100 * time.Millisecond}}
	ch := ddltest.ApplySchema(t, cfg)
	if got := reached(ch); got != "A" {
		t.Fatalf("with B stopped the connection reached %s, want A", got)
	}
	stop := runWorker(t, ctx, cfg, nil)
	onA, err := connect.OpenClickHouse(ctx, tlsTo(t, addrA, certsA))
	if err != nil {
		t.Fatal(err)
	}
	defer onA.Close()
	usageOverTLS(t, cfg, onA, 0, 300, cfg.Kafka.Brokers)
	stop()

	none := both
	none.Failover = []string{"127.0.0.1:1"}
	if _, err := connect.OpenClickHouse(ctx, none); err == nil || !strings.Contains(err.Error(), addrB+": ") || !strings.Contains(err.Error(), "127.0.0.1:1: ") {
		t.Errorf("no address answers: %v; want each address's failure", err)
	}
}

// forwarder relays TCP connections to one address until it is closed; closing it also
// cuts the connections it relays, as a server or its node going away does.
type forwarder struct {
	ln       net.Listener
	to       string
	accepted atomic.Int64
	mu       sync.Mutex
	conns    []net.Conn
}

func newForwarder(t *testing.T, to string) *forwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{ln: ln, to: to}
	t.Cleanup(f.close)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			f.accepted.Add(1)
			f.mu.Lock()
			f.conns = append(f.conns, c, up)
			f.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
	return f
}

func (f *forwarder) addr() string { return f.ln.Addr().String() }

func (f *forwarder) close() {
	_ = f.ln.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		_ = c.Close()
	}
	f.conns = nil
}

// TestClickHouseFailoverMidIngestion cuts the first of two addresses of the same server
// while a worker ingests over TLS: its connections break, the writes in flight are
// retried on connections to the second address, and every event is stored exactly once.
func TestClickHouseFailoverMidIngestion(t *testing.T) {
	addr, certs := tlsClickHouse(t)
	first, second := newForwarder(t, addr), newForwarder(t, addr)
	ctx := context.Background()
	cfg := stacktest.SampleConfig()
	cfg.Kafka.Brokers = stacktest.StartBroker(t, 3, cfg.Streams[0].Topic, cfg.Streams[1].Topic)
	cfg.Kafka.Group = stacktest.UniqueName("group")
	cfg.ClickHouse = tlsTo(t, addr, certs)
	cfg.ClickHouse.Database = stacktest.UniqueName("test_failover")
	cfg.Batch = pipeline.BatchConfig{MaxRows: 100, MaxWait: pipeline.Duration{Duration: 50 * time.Millisecond}}
	direct := ddltest.ApplySchema(t, cfg)
	cfg.ClickHouse.Addr, cfg.ClickHouse.Failover = first.addr(), []string{second.addr()}

	stop := runWorker(t, ctx, cfg, nil)
	defer stop()
	usageOverTLS(t, cfg, direct, 0, 500, cfg.Kafka.Brokers)
	if first.accepted.Load() == 0 || second.accepted.Load() != 0 {
		t.Fatalf("before the cut: %d connections through the first address, %d through the second; want all through the first",
			first.accepted.Load(), second.accepted.Load())
	}
	first.close()
	usageOverTLS(t, cfg, direct, 500, 1500, cfg.Kafka.Brokers)
	if second.accepted.Load() == 0 {
		t.Error("no connection went through the second address")
	}
}
