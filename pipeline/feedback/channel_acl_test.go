package feedback

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ddl/ddltest"
	"customerloop.dev/customerloop/pipeline/internal/stacktest"
	"github.com/go-logr/logr/testr"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"
)

// TestStatementTopicsUnderACLs runs the publisher against a broker that enforces ACLs,
// with each customer given what docs/customers.md tells a Kafka administrator to grant:
// READ and DESCRIBE on the prefix of their own topics, "acme.customer.<id>.". Customer
// c1 reads their statements and is refused c10's and c2's topics, although c10's name
// starts with c1's id.
func TestStatementTopicsUnderACLs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg, fc := stacktest.FeedbackConfig(stacktest.UniqueName("test_channel_acl"))
	cfg.ClickHouse.Addr = stacktest.ClickhouseAddr(t)
	ch := ddltest.ApplyFeedback(t, cfg, fc)
	sc := pipeline.StatementConfig{Loop: cfg.Loop, Topic: "acme.customer.{customer}.statements", Feedback: fc}
	grant := func(customer string) kfake.Opt {
		topic, err := sc.TopicFor(customer)
		if err != nil {
			t.Fatal(err)
		}
		prefix := topic[:len(topic)-len("statements")]
		acl := func(op kmsg.ACLOperation) kfake.ACL {
			return kfake.ACL{Resource: kmsg.ACLResourceTypeTopic, Name: prefix, Pattern: kmsg.ACLResourcePatternTypePrefixed, Operation: op, Allow: true}
		}
		return kfake.User("PLAIN", customer, customer+"-secret", acl(kmsg.ACLOperationRead), acl(kmsg.ACLOperationDescribe))
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.EnableSASL(), kfake.EnableACLs(), kfake.AllowAutoTopicCreation(),
		kfake.Superuser("PLAIN", "customerloop", "manager-secret"), grant("c1"), grant("c10"), grant("c2"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()

	// Usage of c1, c10 and c2.
	now := time.Now().UTC().Truncate(time.Second)
	data := generateDigestData(now, 5)
	var events []usageEvent
	for _, e := range data.usageEvents(rand.New(rand.NewPCG(9, 9))) {
		switch e.customer {
		case "c0":
			e.customer = "c10"
		case "c1", "c2":
		default:
			continue
		}
		events = append(events, e)
	}
	var offset int64
	data.insertUsage(t, ctx, ch, fc.Database, cfg.Streams[0], events, &offset)

	sc.Kafka = pipeline.KafkaConfig{Brokers: brokers, SASL: &pipeline.SASLConfig{Mechanism: "PLAIN", Username: "customerloop", Password: "manager-secret"}}
	pub, err := NewChannelPublisher(sc, ch, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	res, err := pub.PublishOnce(ctx)
	if err != nil || res.Statements == 0 {
		t.Fatalf("publishing: %+v, %v", res, err)
	}

	read := func(user, customer string) (int, error) {
		topic, _ := sc.TopicFor(customer)
		cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.SASL(plain.Auth{User: user, Pass: user + "-secret"}.AsMechanism()),
			kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		n := 0
		var ferr error
		for pctx.Err() == nil {
			f := cl.PollFetches(pctx)
			n += f.NumRecords()
			for _, e := range f.Errors() {
				if !errors.Is(e.Err, context.DeadlineExceeded) {
					ferr = e.Err
				}
			}
			if n > 0 || ferr != nil {
				break
			}
		}
		return n, ferr
	}
	if n, err := read("c1", "c1"); n == 0 || err != nil {
		t.Errorf("c1 read %d of their own statements (err %v), want some", n, err)
	}
	for _, other := range []string{"c10", "c2"} {
		n, err := read("c1", other)
		if n != 0 {
			t.Errorf("c1 read %d statements of %s", n, other)
		}
		if !errors.Is(err, kerr.TopicAuthorizationFailed) {
			t.Errorf("c1 reading %s's topic: %v, want %v", other, err, kerr.TopicAuthorizationFailed)
		}
	}
	if n, err := read("c10", "c10"); n == 0 || err != nil {
		t.Errorf("c10 read %d of their own statements (err %v), want some", n, err)
	}
}
