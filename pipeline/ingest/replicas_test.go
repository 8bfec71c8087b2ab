package ingest

import (
	"reflect"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"github.com/ClickHouse/clickhouse-go/v2"
)

func TestShardsOfPutsTheLoopsNodeFirst(t *testing.T) {
	rs := []replica{
		{shard: 1, num: 1, addr: "a:1"},
		{shard: 1, num: 2, addr: "b:1", local: true},
		{shard: 1, num: 3, addr: "c:1"},
		{shard: 2, num: 1, addr: "d:1"},
		{shard: 2, num: 2, addr: "e:1"},
		{shard: 3, num: 1, addr: "f:1", local: true},
	}
	var got [][]string
	for _, sh := range shardsOf(rs) {
		var addrs []string
		for _, r := range sh {
			addrs = append(addrs, r.addr)
		}
		got = append(got, addrs)
	}
	want := [][]string{{"b:1", "a:1", "c:1"}, {"d:1", "e:1"}, {"f:1"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("shardsOf = %v, want %v", got, want)
	}
}

func TestLedgerEndMergeIgnoresShardsWithoutEntries(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	// What a shard without the partition's entries returns: max() of nothing.
	empty := ledgerEnd{last: 0, written: time.Unix(0, 0).UTC(), entries: 0}
	cases := []struct {
		name  string
		parts []ledgerEnd
		want  ledgerEnd
	}{
		{"no shard has entries", []ledgerEnd{empty, empty}, ledgerEnd{}},
		{"one shard has them", []ledgerEnd{empty, {last: 299, written: t0, entries: 2}, empty},
			ledgerEnd{last: 299, written: t0, entries: 2}},
		{"entries on two shards", []ledgerEnd{{last: 99, written: t0.Add(time.Hour), entries: 1}, empty, {last: 299, written: t0, entries: 2}},
			ledgerEnd{last: 299, written: t0.Add(time.Hour), entries: 3}},
		{"a negative last offset is not mistaken for none", []ledgerEnd{{last: -1, written: t0, entries: 1}, empty},
			ledgerEnd{last: -1, written: t0, entries: 1}},
	}
	for _, c := range cases {
		var got ledgerEnd
		for _, p := range c.parts {
			got = got.merge(p)
		}
		if got.last != c.want.last || !got.written.Equal(c.want.written) || got.entries != c.want.entries {
			t.Errorf("%s: merge = %+v, want %+v", c.name, got, c.want)
		}
	}
}

func TestClusterInsertSettingsPerServer(t *testing.T) {
	cases := []struct {
		name     string
		features pipeline.ServerFeatures
		want     clickhouse.Settings
	}{
		{"18.16: synchronous distributed inserts only, no string setting",
			pipeline.ServerFeatures{}, clickhouse.Settings{"insert_distributed_sync": 1}},
		{"a server with deduplication tokens",
			pipeline.ServerFeatures{DedupToken: true}, clickhouse.Settings{"insert_distributed_sync": 1, "insert_deduplication_token": "b1/usage_raw/500"}},
	}
	for _, c := range cases {
		if got := clusterInsertSettings(c.features, insertToken("b1", "usage_raw", 500)); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: settings = %v, want %v", c.name, got, c.want)
		}
	}
}

// A retry that sends fewer rows than the attempt before it must not share its token, or
// the server would take its blocks for the first attempt's and drop them.
func TestInsertTokenChangesWithTheRowsSent(t *testing.T) {
	first, same, fewer := insertToken("b1", "usage_raw", 500), insertToken("b1", "usage_raw", 500), insertToken("b1", "usage_raw", 320)
	if first != same {
		t.Errorf("a retry of the same rows has token %q, the first attempt %q", same, first)
	}
	if first == fewer {
		t.Errorf("a retry of fewer rows shares the first attempt's token %q", first)
	}
	if insertToken("b1", "usage_raw", 500) == insertToken("b2", "usage_raw", 500) {
		t.Error("two batches share a token")
	}
}

func TestShardReaderTableNames(t *testing.T) {
	if got := (shardReader{}).table("db", pipeline.LedgerTable); got != pipeline.QualifiedTable("db", pipeline.LedgerTable) {
		t.Errorf("single server reads %s", got)
	}
	if got := (shardReader{local: true}).table("db", pipeline.LedgerTable); got != pipeline.QualifiedTable("db", pipeline.LocalTable(pipeline.LedgerTable)) {
		t.Errorf("a synced replica reads %s", got)
	}
}

func TestUnrecordedKeepsOnlyMissingSpans(t *testing.T) {
	spans := map[topicPartition]*span{{"u", 0}: {last: 9}, {"u", 1}: {last: 19}, {"p", 0}: {last: 29}}
	got := unrecorded(spans, map[topicPartition]bool{{"u", 1}: true})
	if len(got) != 2 || got[topicPartition{"u", 0}] == nil || got[topicPartition{"p", 0}] == nil {
		t.Errorf("unrecorded = %v, want u/0 and p/0", got)
	}
	if len(spans) != 3 {
		t.Error("unrecorded changed the batch's spans, which the Kafka commit still needs")
	}
}
