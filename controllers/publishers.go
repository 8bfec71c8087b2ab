package controllers

import (
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"k8s.io/apimachinery/pkg/types"
)

// publishers holds a publisher of each loop that runs one (digests, customer
// statements). Reconciles run only on the elected manager, so one publisher of a kind
// runs per loop however many replicas there are.
type publishers[P interface{ Close() error }, S any] struct {
	mu sync.Mutex
	m  map[types.NamespacedName]*publisherEntry[P, S]
}

// publisherEntry is a loop's publisher, the connection it owns, when its next round is
// due, and what the loop's status shows of it.
type publisherEntry[P interface{ Close() error }, S any] struct {
	hash      string // of the publisher's config and credentials
	conn      driver.Conn
	pub       P
	next      time.Time // the next round is due
	published int64
	status    S
}

func (d *publishers[P, S]) get(key types.NamespacedName) *publisherEntry[P, S] {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.m[key]
}

func (d *publishers[P, S]) put(key types.NamespacedName, e *publisherEntry[P, S]) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil {
		d.m = map[types.NamespacedName]*publisherEntry[P, S]{}
	}
	d.m[key] = e
}

// stop closes the loop's publisher, if it has one.
func (d *publishers[P, S]) stop(key types.NamespacedName) {
	d.mu.Lock()
	e := d.m[key]
	delete(d.m, key)
	d.mu.Unlock()
	if e != nil {
		_ = e.pub.Close()
		_ = e.conn.Close()
	}
}
