package connect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"customerloop.dev/customerloop/pipeline"
	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// ErrDDLPending is what ApplySchema's error matches (errors.Is) when every statement
// succeeded on the hosts that answered but some hosts of the cluster had not run all of
// them within the wait (see ApplySchema). ClickHouse keeps the statements in its
// distributed DDL queue and those hosts run them, in order, when they are back: the
// caller reports a warning and carries on (ingestion goes through the hosts that are
// up); reconciling again applies the same idempotent statements once more.
var ErrDDLPending = errors.New("ON CLUSTER DDL not yet run by every host")

// DDLPendingError names the hosts that had not run some ON CLUSTER statements yet.
type DDLPendingError struct {
	Objects []string // the objects of the statements they had not run
	Hosts   []string // host:port, as the cluster's <remote_servers> names them
}

func (e *DDLPendingError) Error() string {
	return fmt.Sprintf("%s: %s not yet applied on %s (they run it from the distributed DDL queue when back)",
		ErrDDLPending.Error(), strings.Join(e.Objects, ", "), strings.Join(e.Hosts, ", "))
}

// Is makes errors.Is(err, ErrDDLPending) true.
func (e *DDLPendingError) Is(target error) bool { return target == ErrDDLPending }

func (e *DDLPendingError) Add(object string, hosts []string) {
	e.Objects = append(e.Objects, object)
	for _, h := range hosts {
		if !slices.Contains(e.Hosts, h) {
			e.Hosts = append(e.Hosts, h)
		}
	}
	slices.Sort(e.Hosts)
}

// DDLHostError is an ON CLUSTER statement that failed on one host.
type DDLHostError struct {
	Object, Host string
	Code         int64 // ClickHouse's error code on that host
	Message      string
}

func (e *DDLHostError) Error() string {
	return fmt.Sprintf("schema of %s failed on %s: code %d: %s", e.Object, e.Host, e.Code, e.Message)
}

// onClusterPattern finds the cluster of an ON CLUSTER statement, as OnCluster writes it.
var onClusterPattern = regexp.MustCompile("ON CLUSTER `([A-Za-z_][A-Za-z0-9_]*)`")

// errTimeoutExceeded is ClickHouse's TIMEOUT_EXCEEDED, what a distributed DDL statement
// ends with when some host has not run it within distributed_ddl_task_timeout.
const errTimeoutExceeded = 159

// RunDDL runs one statement. An ON CLUSTER statement answers one row per host that ran
// it (host, port, status, error, num_hosts_remaining, num_hosts_active): a host's failure
// is a DDLHostError naming it; a wait longer than timeout seconds returns the hosts that
// had not answered, with a nil error.
func RunDDL(ctx context.Context, conn driver.Conn, s pipeline.Statement, timeout int, args ...any) ([]string, error) {
	m := onClusterPattern.FindStringSubmatch(s.SQL)
	if m == nil {
		if err := conn.Exec(ctx, s.SQL, args...); err != nil {
			return nil, fmt.Errorf("schema of %s: %w", s.Object, err)
		}
		return nil, nil
	}
	qctx := clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"distributed_ddl_task_timeout": signedSetting(conn, timeout)}))
	done := map[string]bool{}
	var failed []error
	rows, err := conn.Query(qctx, s.SQL, args...)
	if err == nil {
		for rows.Next() {
			var (
				host, msg         string
				port              uint16
				status            int64
				remaining, active uint64
			)
			if err := rows.Scan(&host, &port, &status, &msg, &remaining, &active); err != nil {
				rows.Close()
				return nil, fmt.Errorf("schema of %s: reading the hosts' answers: %w", s.Object, err)
			}
			addr := net.JoinHostPort(host, strconv.Itoa(int(port)))
			done[addr] = true
			if status != 0 {
				failed = append(failed, &DDLHostError{Object: s.Object, Host: addr, Code: status, Message: msg})
			}
		}
		rows.Close()
		err = rows.Err()
	}
	if len(failed) > 0 {
		return nil, errors.Join(failed...)
	}
	var ex *clickhouse.Exception
	if errors.As(err, &ex) && ex.Code == errTimeoutExceeded {
		hosts, herr := ClusterHosts(ctx, conn, m[1])
		if herr != nil {
			return nil, fmt.Errorf("schema of %s: %w (and listing the hosts: %w)", s.Object, err, herr)
		}
		var pending []string
		for _, h := range hosts {
			if !done[h.Addr] {
				pending = append(pending, h.Addr)
			}
		}
		if len(pending) == 0 { // the hosts answered after the timeout: nothing is pending
			return nil, nil
		}
		return pending, nil
	}
	if err != nil {
		return nil, fmt.Errorf("schema of %s: %w", s.Object, err)
	}
	return nil, nil
}

// clusterHost is one node of a cluster as system.clusters lists it.
type clusterHost struct {
	Shard uint32
	Addr  string // host:port of its native protocol
}

// ClusterHosts lists the nodes of a cluster, shard by shard.
func ClusterHosts(ctx context.Context, conn driver.Conn, cluster string) ([]clusterHost, error) {
	rows, err := conn.Query(ctx, "SELECT shard_num, host_name, port FROM system.clusters WHERE cluster = ? ORDER BY shard_num, replica_num", cluster)
	if err != nil {
		return nil, fmt.Errorf("reading the hosts of cluster %s: %w", cluster, err)
	}
	defer rows.Close()
	var out []clusterHost
	for rows.Next() {
		var h clusterHost
		var host string
		var port uint16
		if err := rows.Scan(&h.Shard, &host, &port); err != nil {
			return nil, fmt.Errorf("reading the hosts of cluster %s: %w", cluster, err)
		}
		h.Addr = net.JoinHostPort(host, strconv.Itoa(int(port)))
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading the hosts of cluster %s: %w", cluster, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("cluster %s is not in the server's remote_servers", cluster)
	}
	return out, nil
}

// nodeConn is a connection to one node of the cluster.
type nodeConn struct {
	clusterHost
	Conn driver.Conn
}

// ConnectNodes connects to every node of the loop's cluster, found through conn, with
// the loop's credentials: what only a node itself knows (system.parts, system.mutations
// of its replicas) is read there. A node that does not answer is left out, as long as
// every shard has one that does (its replicas hold the same data); close closes them.
// With TLS the nodes are reached over TLS at the ports system.clusters lists, so the
// cluster's <remote_servers> must name their secure native ports.
func ConnectNodes(ctx context.Context, conn driver.Conn, ch pipeline.ClickHouseConfig) (nodes []nodeConn, closeAll func(), err error) {
	hosts, err := ClusterHosts(ctx, conn, ch.Cluster)
	if err != nil {
		return nil, nil, err
	}
	closeAll = func() {
		for _, n := range nodes {
			_ = n.Conn.Close()
		}
	}
	reached := map[uint32]bool{}
	var down []error
	for _, h := range hosts {
		c, err := OpenClickHouse(ctx, pipeline.ClickHouseConfig{Addr: h.Addr, TLS: ch.TLS, Username: ch.Username, Password: ch.Password})
		if err != nil {
			down = append(down, err)
			continue
		}
		nodes = append(nodes, nodeConn{h, c})
		reached[h.Shard] = true
	}
	for _, h := range hosts {
		if !reached[h.Shard] {
			closeAll()
			return nil, nil, fmt.Errorf("no replica of shard %d of cluster %s answers: %w", h.Shard, ch.Cluster, errors.Join(down...))
		}
	}
	return nodes, closeAll, nil
}

// signedSetting is the value to send for a signed (Int64) query setting. Servers older
// than settings-as-strings (protocol revision 54429; 18.16 is one) read a signed setting
// as a zigzag varint, while the client writes every number as a plain varint: sent as is,
// a timeout of 15 arrives as -8, which means "wait forever".
func signedSetting(conn driver.Conn, v int) int {
	if sv, err := conn.ServerVersion(); err == nil && sv.Revision <= settingsAsStringsRevision {
		return v << 1
	}
	return v
}

const settingsAsStringsRevision = 54429

// ClusterNodes opens a connection, with the loop's credentials, to every node of the
// loop's cluster as system.clusters lists it (host_name and native port), for reads that
// must see each node's own objects: a Distributed read or the cluster() table function
// reaches one replica per shard only. A node that does not answer is left out while
// another replica of its shard answers (the cluster's DDL queue brings it in line when it
// is back). The cluster is read through conn, a connection to the loop's ClickHouse. The
// caller closes the connections it gets.
func ClusterNodes(ctx context.Context, conn driver.Conn, ch pipeline.ClickHouseConfig) ([]driver.Conn, error) {
	nodes, _, err := ConnectNodes(ctx, conn, ch)
	if err != nil {
		return nil, err
	}
	out := make([]driver.Conn, len(nodes))
	for i, n := range nodes {
		out[i] = n.Conn
	}
	return out, nil
}
