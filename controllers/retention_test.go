package controllers

import (
	"context"
	"fmt"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ingest"
	"customerloop.dev/customerloop/test/testkit"
)

// TestRetentionDropsOldMonths: a Usage stream with retentionDays on ClickHouse 18.16
// loses its rows of months entirely past the retention on a reconcile, keeps the recent
// ones, and the ledger still accounts for every message.
func TestRetentionDropsOldMonths(t *testing.T) {
	ctx := context.Background()
	loop := newLoop(t)
	days := int32(90)
	loop.Spec.Streams[0].RetentionDays = &days
	if err := k8s.Create(ctx, loop); err != nil {
		t.Fatal(err)
	}
	db, topic := loop.Spec.ClickHouse.Database, loop.Spec.Streams[0].Topic
	var msgs []string
	old := time.Date(2020, 3, 10, 0, 0, 0, 0, time.UTC).Unix()
	now := time.Now().Unix()
	for i := range 20 {
		ts := old + int64(i)*86400*20 // March to mid-2021: every month long past 90 days
		if i >= 15 {
			ts = now - int64(i-15)*60
		}
		msgs = append(msgs, fmt.Sprintf(`{"id":"e%d","customer":"c0","product":"p0","ts":%d,"qty":1}`, i, ts))
	}
	produceJSON(t, topic, msgs)
	raw := pipeline.QualifiedTable(db, "usage_raw")
	testkit.Eventually(t, 60*time.Second, "the old months dropped, the recent rows kept", func() (bool, string) {
		led, err := ingest.ReadLedgerTotals(ctx, ch, db, topic)
		if err != nil {
			return false, err.Error()
		}
		n := countRows(t, "SELECT count() FROM "+raw)
		oldRows := countRows(t, fmt.Sprintf("SELECT count() FROM %s WHERE ts < toDateTime(%d)", raw, now-86400))
		return led.Messages == 20 && n == 5 && oldRows == 0, fmt.Sprintf("ledger %d of 20 messages, %d rows (%d old), want 5 recent", led.Messages, n, oldRows)
	})
	if n := countRows(t, fmt.Sprintf("SELECT count() FROM system.parts WHERE database = '%s' AND table = 'usage_raw' AND active AND partition < '%s'",
		db, time.Now().AddDate(0, 0, -int(days)).Format("200601"))); n != 0 {
		t.Errorf("%d parts of expired months are still active", n)
	}
}
