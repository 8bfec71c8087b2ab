package controllers

import (
	"context"
	"sync"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
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

// ensure returns the loop's publisher for the config that hashes to hash. It starts one,
// with a ClickHouse connection of its own that outlives the reconcile, when the loop has
// none or its config changed; before, when set, is the status the loop shows of it. A
// publisher that cannot start is an invalid spec. created says it was started now.
func (d *publishers[P, S]) ensure(ctx context.Context, key types.NamespacedName, hash string, ch pipeline.ClickHouseConfig,
	start func(driver.Conn) (P, error), before *S) (e *publisherEntry[P, S], created bool, err error) {
	if e = d.get(key); e != nil && e.hash == hash {
		return e, false, nil
	}
	if e != nil {
		d.stop(key)
	}
	conn, err := connect.OpenClickHouse(ctx, ch)
	if err != nil {
		return nil, false, err
	}
	pub, err := start(conn)
	if err != nil {
		_ = conn.Close()
		return nil, false, &specError{msg: err.Error()}
	}
	e = &publisherEntry[P, S]{hash: hash, conn: conn, pub: pub}
	if before != nil {
		e.status = *before
	}
	d.put(key, e)
	return e, true, nil
}
