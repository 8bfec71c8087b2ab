package pipeline

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// ChannelTable records, per (loop, customer, kind, period), every statement version the
// channel publisher reserved and every one it sent, and every consent receipt it sent, in
// the loop's database. A round follows the digests' protocol (see DigestTable): reserve,
// send, record what the broker acknowledged. A statement's version is the time of its
// round in milliseconds (or one more than the last, if the clock went back), so that
// versions keep increasing after a customer's rows here were deleted with their consent.
const ChannelTable = "customer_channel"

// CustomerPlaceholder is what a statement topic names the customer by: with it, each
// customer has a topic of their own (see StatementConfig.TopicFor).
const CustomerPlaceholder = "{customer}"

// StatementConfig is what the channel publisher of a loop needs: where each customer's
// statements and consent receipts go, and what the feedback figures are read from.
type StatementConfig struct {
	// Loop names the loop as "namespace/name"; it is in every message.
	Loop string `json:"loop"`
	// Kafka is the connection (brokers, TLS, SASL) the loop's workers use.
	Kafka KafkaConfig `json:"kafka"`
	// Topic is a topic name, or a template holding CustomerPlaceholder once, followed by
	// a dot: "acme.customer.{customer}.statements" gives each customer a topic of their
	// own; "acme.statements" is one topic keyed by customer.
	Topic string `json:"topic"`
	// Feedback names the loop's database, tables and grain.
	Feedback FeedbackConfig `json:"feedback"`
	// HashConsentIDs is set when the consent tables keep customers' clear ids while the
	// feedback tables keep their HMAC under HMACKey (a loop that hashes customer ids on
	// some streams only).
	HashConsentIDs bool   `json:"hashConsentIds,omitempty"`
	HMACKey        []byte `json:"-"`
	// Consent is set when the loop has a consent stream (its table is ConsentTable);
	// without one every customer's state is granted and no receipt is sent.
	Consent bool `json:"consent,omitempty"`
	// Publisher identifies this replica in the channel table.
	Publisher string `json:"publisher,omitempty"`
	// Cluster is the loop's ClickHouse cluster, or "".
	Cluster string `json:"cluster,omitempty"`
	// Interval is how often a round is published.
	Interval Duration `json:"interval,omitempty"`
}

// topicChars are the characters of a Kafka topic name.
var topicChars = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// Validate checks the config before anything reaches SQL or Kafka.
func (c StatementConfig) Validate() error {
	var errs []error
	if c.Loop == "" {
		errs = append(errs, errors.New("loop is required"))
	}
	if len(c.Kafka.Brokers) == 0 {
		errs = append(errs, errors.New("kafka.brokers: at least one broker is required"))
	}
	if err := ValidStatementTopic(c.Topic); err != nil {
		errs = append(errs, err)
	}
	for name, v := range map[string]string{"feedback.database": c.Feedback.Database, "feedback.usageTable": c.Feedback.UsageTable,
		"feedback.planTable": c.Feedback.PlanTable} {
		if err := ValidIdent(v); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	if c.Feedback.Grain != GrainWeek && c.Feedback.Grain != GrainMonth {
		errs = append(errs, fmt.Errorf("feedback.grain %q: want %s or %s", c.Feedback.Grain, GrainWeek, GrainMonth))
	}
	return errors.Join(errs...)
}

// ValidStatementTopic checks a statement topic: a topic name, or a template with
// CustomerPlaceholder once and a dot right after it. The dot ends the customer's part of
// the name, and no encoded customer id holds one (see EncodeTopicCustomer), so that a
// prefixed ACL on "acme.customer.c1." never matches the topic of customer "c10".
func ValidStatementTopic(t string) error {
	n := strings.Count(t, CustomerPlaceholder)
	switch {
	case t == "":
		return errors.New("topic is required")
	case n > 1:
		return fmt.Errorf("topic %q: %s may appear once", t, CustomerPlaceholder)
	case n == 1 && !strings.Contains(t, CustomerPlaceholder+"."):
		return fmt.Errorf("topic %q: %s must be followed by a dot (for example acme.customer.{customer}.statements), so that a prefixed ACL on one customer's topics matches no other customer's", t, CustomerPlaceholder)
	case !topicChars.MatchString(strings.Replace(t, CustomerPlaceholder, "x", 1)):
		return fmt.Errorf("topic %q: want letters, digits, '.', '_' and '-' besides %s", t, CustomerPlaceholder)
	case len(t) > 249:
		return fmt.Errorf("topic %q: longer than Kafka's 249 characters", t)
	}
	return nil
}

// PerCustomer reports whether each customer has a topic of their own.
func (c StatementConfig) PerCustomer() bool { return strings.Contains(c.Topic, CustomerPlaceholder) }

// TopicFor returns the topic of a customer's statements and receipts. customer is the
// id as stored (the HMAC of the clear id on a loop that hashes customer ids, so that a
// topic name never holds a clear id that ClickHouse does not). An error says the name
// would exceed Kafka's 249 characters.
func (c StatementConfig) TopicFor(customer string) (string, error) {
	if !c.PerCustomer() {
		return c.Topic, nil
	}
	t := strings.Replace(c.Topic, CustomerPlaceholder, EncodeTopicCustomer(customer), 1)
	if len(t) > 249 {
		return "", fmt.Errorf("the statement topic of a customer would have %d characters, over Kafka's 249", len(t))
	}
	return t, nil
}

// EncodeTopicCustomer spells a customer id in a topic name: letters, digits and '-' as
// they are, every other byte (including '.' and '_') as '_' and two upper-case hex
// digits. Two ids never give the same name, and no name holds a dot.
func EncodeTopicCustomer(id string) string {
	var b strings.Builder
	for i := 0; i < len(id); i++ {
		c := id[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "_%02X", c)
	}
	return b.String()
}
