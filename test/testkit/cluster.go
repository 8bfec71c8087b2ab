package testkit

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// ClusterNode stops or starts node n (1..3, as hack/clickhouse-cluster.sh numbers them)
// of the local test cluster and waits until it has exited ("stop") or answers ("start").
func ClusterNode(t testing.TB, action string, n int) {
	t.Helper()
	if action != "stop" && action != "start" {
		t.Fatalf("ClusterNode: action %q is neither stop nor start", action)
	}
	script := filepath.Join(RepoRoot(t), "hack", "clickhouse-cluster.sh")
	out, err := exec.Command(script, action+"-node", strconv.Itoa(n)).CombinedOutput()
	if err != nil {
		t.Fatalf("clickhouse-cluster.sh %s-node %d: %v\n%s", action, n, err, out)
	}
}

// RepoRoot is the directory holding go.mod, found by walking up from the test's working
// directory.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's working directory")
		}
		dir = parent
	}
}

// LockCluster gives the calling test the local test cluster to itself until it ends.
// go test runs packages in parallel, and a test that stops a node or expects one to stay
// down must not meet another package's test starting it again; tests that do not use the
// cluster are not held up. It is a lock on a file, so it holds across test processes;
// within one process it is shared (a test and its subtests and helpers may each ask).
func LockCluster(t testing.TB) {
	t.Helper()
	clusterLock.Lock()
	defer clusterLock.Unlock()
	if clusterLock.holders == 0 {
		f, err := os.OpenFile(filepath.Join(os.TempDir(), "customerloop-test-cluster.lock"), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			_ = f.Close()
			t.Fatalf("locking the test cluster: %v", err)
		}
		clusterLock.file = f
	}
	clusterLock.holders++
	// Call it before anything else registers a cleanup: cleanups run last first, so the
	// lock is released after the test's own cleanups have restarted its nodes.
	t.Cleanup(func() {
		clusterLock.Lock()
		defer clusterLock.Unlock()
		if clusterLock.holders--; clusterLock.holders == 0 {
			_ = syscall.Flock(int(clusterLock.file.Fd()), syscall.LOCK_UN)
			_ = clusterLock.file.Close()
		}
	})
}

var clusterLock struct {
	sync.Mutex
	holders int
	file    *os.File
}

// Cluster returns the name and node addresses of the local test cluster that make test
// provisions (CLICKHOUSE_CLUSTER, CLICKHOUSE_CLUSTER_ADDRS), and takes it for the test
// (LockCluster). Without them the test is skipped, or fails under make test
// (CUSTOMERLOOP_REQUIRE_STACK).
func Cluster(t testing.TB) (string, []string) {
	t.Helper()
	name, addrs := os.Getenv("CLICKHOUSE_CLUSTER"), os.Getenv("CLICKHOUSE_CLUSTER_ADDRS")
	if name == "" || addrs == "" {
		if os.Getenv("CUSTOMERLOOP_REQUIRE_STACK") != "" {
			t.Fatal("CLICKHOUSE_CLUSTER and CLICKHOUSE_CLUSTER_ADDRS are not set; run the tests with make test")
		}
		t.Skip("no ClickHouse cluster; make test provisions one (hack/clickhouse-cluster.sh)")
	}
	LockCluster(t)
	return name, strings.Split(addrs, ",")
}
