// Package pipeline is the contract CustomerLoop's planes share: a loop's Config and its
// validation, the names and columns of the tables a loop owns, the reasons a message is
// dead-lettered, consent messages and the state they resolve to. It is plain data and
// talks to nothing; the planes below it do the work:
//
//   - connect dials ClickHouse (single server or cluster) and Kafka;
//   - ddl plans a loop's ClickHouse objects and applies them;
//   - ingest runs the workers that read Kafka and write ClickHouse;
//   - feedback turns the stored data into digests, reports and consent applied;
//   - dashboard serves the product teams' page.
//
// None of them knows Kubernetes: a Config is rendered by the controller from a
// CustomerLoop, or read from a file.
package pipeline

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Kind is the kind of customer data a stream carries.
type Kind string

const (
	// KindUsage streams carry usage events.
	KindUsage Kind = "Usage"
	// KindPlan streams carry plans: planned quantities for coming periods.
	KindPlan Kind = "Plan"
)

// Config is everything a worker needs to run one loop. It is plain data so that it can be
// written to a file or a ConfigMap.
type Config struct {
	// Loop names the loop in logs and metrics, as "namespace/name".
	Loop       string           `json:"loop"`
	Kafka      KafkaConfig      `json:"kafka"`
	ClickHouse ClickHouseConfig `json:"clickhouse"`
	Streams    []StreamConfig   `json:"streams"`
	Batch      BatchConfig      `json:"batch,omitempty"`
	// Rollups are aggregates of the streams kept by ClickHouse itself (materialized
	// views); workers do not use them, the schema applier does.
	Rollups []RollupConfig `json:"rollups,omitempty"`
	// Feedback, when set, is what the loop's plan-against-actual views read; like the
	// rollups it is for the schema applier, not the workers.
	Feedback *FeedbackConfig `json:"feedback,omitempty"`
	// Digests, when set, is the loop's digest publisher, run by the controller.
	Digests *DigestConfig `json:"digests,omitempty"`
	// Statements, when set, is the loop's channel publisher of customer statements and
	// consent receipts, run by the controller.
	Statements *StatementConfig `json:"statements,omitempty"`
	// MaxMessageBytes is the largest message value ingested; larger ones are
	// dead-lettered with reason oversize.
	MaxMessageBytes int `json:"maxMessageBytes,omitempty"`
	// Consent, when set, is the loop's consent stream; workers withhold the messages of
	// customers who withdrew.
	Consent *ConsentConfig `json:"consent,omitempty"`
	// MaxDedupIDs bounds each partition's duplicate window, and so its memory (48 to 96
	// bytes an id): past it the oldest ids are forgotten before dedupWindow has passed.
	// 0 takes the default, 2^21 (96 MiB).
	MaxDedupIDs int `json:"maxDedupIDs,omitempty"`
	// Limits bound a message's fields, strings and nesting; see Limits.
	Limits Limits `json:"limits,omitzero"`
	// HMACKey keys the hash of the fields marked PII Hash. Like the passwords it is
	// never serialised: a worker takes it from its environment.
	HMACKey []byte `json:"-"`
}

// KafkaConfig is the Kafka connection and consumer group.
type KafkaConfig struct {
	Brokers []string `json:"brokers"`
	Group   string   `json:"group"`
	// SessionTimeout is how long the group waits for a silent member (a crashed worker)
	// before moving its partitions to others.
	SessionTimeout Duration `json:"sessionTimeout,omitempty"`
	// RebalanceTimeout is how long a rebalance waits for members to rejoin. A member
	// whose generation ends flushes what it holds within half of it before rejoining, so
	// that its partitions never move while it still writes them. A crashed member delays
	// its group's next rebalance by up to this much.
	RebalanceTimeout Duration `json:"rebalanceTimeout,omitempty"`
	// TLS, when set, encrypts the connections to the brokers.
	TLS *TLSConfig `json:"tls,omitempty"`
	// SASL, when set, authenticates the worker to the brokers.
	SASL *SASLConfig `json:"sasl,omitempty"`
}

// TLSConfig is TLS to the brokers or to ClickHouse. The CA and the client certificate
// come from files (mounted Secrets in a worker pod) or, in-process, from memory. The PEM
// held in memory is never serialised.
type TLSConfig struct {
	// CAFile is a PEM bundle of the CAs that sign the servers' certificates; empty means
	// the system's roots.
	CAFile string `json:"caFile,omitempty"`
	// CAPEM is the same bundle in memory; it wins over CAFile.
	CAPEM []byte `json:"-"`
	// CertFile and KeyFile are a client certificate (followed by its intermediates) and
	// its private key, PEM, for servers that authenticate clients by certificate.
	CertFile string `json:"certFile,omitempty"`
	KeyFile  string `json:"keyFile,omitempty"`
	// CertPEM and KeyPEM are the same in memory; they win over the files.
	CertPEM            []byte `json:"-"`
	KeyPEM             []byte `json:"-"`
	ServerName         string `json:"serverName,omitempty"`
	InsecureSkipVerify bool   `json:"insecureSkipVerify,omitempty"`
}

// SASLConfig is SASL authentication to the brokers. Like the ClickHouse password, the
// credentials are never serialised: a worker takes them from its environment.
type SASLConfig struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
	Mechanism string `json:"mechanism"`
	Username  string `json:"-"`
	Password  string `json:"-"`
}

// ClickHouseConfig is the ClickHouse connection. The password is never serialised: the
// worker takes it from its environment.
type ClickHouseConfig struct {
	// Addr is the native protocol's host:port.
	Addr string `json:"addr"`
	// Failover are further addresses of servers holding the same data: each connection
	// goes to the first of Addr and Failover that accepts it, in order. See
	// OpenClickHouse.
	Failover []string `json:"failover,omitempty"`
	// TLS, when set, encrypts the connections (the addresses are secure native ports).
	TLS      *TLSConfig `json:"tls,omitempty"`
	Database string     `json:"database"`
	Username string     `json:"username,omitempty"`
	Password string     `json:"-"`
	// Cluster, when set, names a cluster of the server's <remote_servers>: every object is
	// created ON CLUSTER, tables are Replicated on each shard behind a Distributed table of
	// the public name, and reads that exactly-once depends on go to a synced replica of
	// every shard. See cluster.go.
	Cluster string `json:"cluster,omitempty"`
	// Features is what the server supports beyond 18.16 (ReadServerFeatures): the
	// controller reads it before planning rollups. It is not part of the spec.
	Features ServerFeatures `json:"-"`
}

// StreamConfig is one topic of customer data.
type StreamConfig struct {
	Name            string      `json:"name"`
	Kind            Kind        `json:"kind"`
	Topic           string      `json:"topic"`
	DeadLetterTopic string      `json:"deadLetterTopic"`
	Mapping         Mapping     `json:"mapping"`
	Dimensions      []Dimension `json:"dimensions,omitempty"`
	// DedupWindow is how long an ingested id (event_id, plan_id) is remembered, so that a
	// producer's retry within it is not stored again. Defaults to one minute.
	DedupWindow Duration `json:"dedupWindow,omitempty"`
	// Customers, when set, restricts the customers the stream accepts; others are
	// dead-lettered with reason unknown_customer.
	Customers *CustomerFilter `json:"customers,omitempty"`
	// PII marks core roles that hold personal data; see CorePII.
	PII *CorePII `json:"pii,omitempty"`
	// RetentionDays, when above 0, is how long the stream's raw rows are kept (see
	// ApplyRetention, which the controller runs; workers do not use it).
	RetentionDays int `json:"retentionDays,omitempty"`
}

// CustomerFilter accepts the customers listed in Allowed and those whose id matches
// Pattern (an RE2 expression matched against the whole id).
type CustomerFilter struct {
	Allowed []string `json:"allowed,omitempty"`
	Pattern string   `json:"pattern,omitempty"`
}

// Mapping names the JSON field holding each core role; fields are dotted paths.
type Mapping struct {
	CustomerID  string `json:"customerId"`
	Product     string `json:"product"`
	Quantity    string `json:"quantity,omitempty"`
	EventID     string `json:"eventId,omitempty"`
	Timestamp   string `json:"timestamp,omitempty"`
	PlanID      string `json:"planId,omitempty"`
	Period      string `json:"period,omitempty"`
	SubmittedAt string `json:"submittedAt,omitempty"`
	Confidence  string `json:"confidence,omitempty"`
}

// Dimension is a declared, typed field kept as its own column.
type Dimension struct {
	Name     string `json:"name"`
	Field    string `json:"field"`
	Type     string `json:"type"`
	Nullable bool   `json:"nullable,omitempty"`
	// PII is PIIHash, PIIDrop or empty.
	PII string `json:"pii,omitempty"`
}

// BatchConfig bounds a batch: it is flushed when it holds MaxRows rows or MaxBytes of
// messages, or its oldest message has waited MaxWait, whichever comes first. A worker
// holds at most twice MaxBytes of messages read but not yet written: past that it stops
// fetching until a flush frees room.
type BatchConfig struct {
	MaxRows  int      `json:"maxRows,omitempty"`
	MaxBytes int      `json:"maxBytes,omitempty"`
	MaxWait  Duration `json:"maxWait,omitempty"`
}

// Duration is a time.Duration that reads and writes as "1.5s" in JSON.
type Duration struct{ time.Duration }

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"500ms\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

const (
	defaultMaxRows          = 20_000
	defaultMaxBytes         = 32 << 20
	defaultMaxMessageBytes  = 1 << 20
	defaultMaxWait          = time.Second
	defaultSessionTimeout   = 10 * time.Second
	defaultDedupWindow      = time.Minute
	DefaultMaxDedupIDs      = 1 << 21
	defaultRebalanceTimeout = 60 * time.Second
)

// WithDefaults returns the config with unset batch bounds filled in.
func (c Config) WithDefaults() Config {
	if c.Batch.MaxRows <= 0 {
		c.Batch.MaxRows = defaultMaxRows
	}
	if c.Batch.MaxBytes <= 0 {
		c.Batch.MaxBytes = defaultMaxBytes
	}
	if c.MaxDedupIDs <= 0 {
		c.MaxDedupIDs = DefaultMaxDedupIDs
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = defaultMaxMessageBytes
	}
	c.Limits = c.Limits.WithDefaults()
	if c.Batch.MaxWait.Duration <= 0 {
		c.Batch.MaxWait.Duration = defaultMaxWait
	}
	c.Streams = append([]StreamConfig(nil), c.Streams...)
	for i := range c.Streams {
		if c.Streams[i].DedupWindow.Duration <= 0 {
			c.Streams[i].DedupWindow.Duration = defaultDedupWindow
		}
	}
	if c.Kafka.SessionTimeout.Duration <= 0 {
		c.Kafka.SessionTimeout.Duration = defaultSessionTimeout
	}
	if c.Kafka.RebalanceTimeout.Duration <= 0 {
		c.Kafka.RebalanceTimeout.Duration = defaultRebalanceTimeout
	}
	return c
}

// Table returns the unqualified name of the stream's raw table.
func (s StreamConfig) Table() string { return s.Name + "_raw" }

// Validate checks what the CRD schema checks too, so that a config from any source (a
// file, a test) is held to the same rules before anything reaches SQL.
func (c Config) Validate() error {
	var errs []error
	if len(c.Kafka.Brokers) == 0 {
		errs = append(errs, errors.New("kafka.brokers: at least one broker is required"))
	}
	if c.Kafka.Group == "" {
		errs = append(errs, errors.New("kafka.group is required"))
	}
	if s := c.Kafka.SASL; s != nil {
		switch s.Mechanism {
		case "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
		default:
			errs = append(errs, fmt.Errorf("kafka.sasl.mechanism %q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", s.Mechanism))
		}
	}
	if c.ClickHouse.Addr == "" {
		errs = append(errs, errors.New("clickhouse.addr is required"))
	}
	for _, a := range c.ClickHouse.Failover {
		if a == "" || a == c.ClickHouse.Addr {
			errs = append(errs, fmt.Errorf("clickhouse.failover: %q is empty or the same as clickhouse.addr", a))
		}
	}
	if err := c.ClickHouse.TLS.validate(); err != nil {
		errs = append(errs, fmt.Errorf("clickhouse.tls: %w", err))
	}
	if err := c.Kafka.TLS.validate(); err != nil {
		errs = append(errs, fmt.Errorf("kafka.tls: %w", err))
	}
	if err := ValidIdent(c.ClickHouse.Database); err != nil {
		errs = append(errs, fmt.Errorf("clickhouse.database: %w", err))
	}
	if cl := c.ClickHouse.Cluster; cl != "" {
		if err := ValidIdent(cl); err != nil {
			errs = append(errs, fmt.Errorf("clickhouse.cluster: %w", err))
		}
	}
	if len(c.Streams) == 0 {
		errs = append(errs, errors.New("streams: at least one stream is required"))
	}
	names, topics := map[string]bool{}, map[string]bool{}
	for i, s := range c.Streams {
		at := fmt.Sprintf("streams[%d] (%s)", i, s.Name)
		if names[s.Name] {
			errs = append(errs, fmt.Errorf("%s: duplicate stream name", at))
		}
		names[s.Name] = true
		if topics[s.Topic] {
			errs = append(errs, fmt.Errorf("%s: topic %q is read by another stream", at, s.Topic))
		}
		topics[s.Topic] = true
		if err := s.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", at, err))
		}
	}
	return errors.Join(errs...)
}

func (s StreamConfig) Validate() error {
	var errs []error
	if err := ValidIdent(s.Name); err != nil {
		errs = append(errs, fmt.Errorf("name: %w", err))
	}
	if s.Topic == "" || s.DeadLetterTopic == "" {
		errs = append(errs, errors.New("topic and deadLetterTopic are required"))
	}
	if s.Topic == s.DeadLetterTopic {
		errs = append(errs, errors.New("deadLetterTopic must differ from topic"))
	}
	m := s.Mapping
	required := map[string]string{"customerId": m.CustomerID, "product": m.Product}
	switch s.Kind {
	case KindUsage:
		required["eventId"], required["timestamp"] = m.EventID, m.Timestamp
	case KindPlan:
		required["planId"], required["period"], required["quantity"] = m.PlanID, m.Period, m.Quantity
	default:
		errs = append(errs, fmt.Errorf("kind %q: want %s or %s", s.Kind, KindUsage, KindPlan))
	}
	if f := s.Customers; f != nil {
		if len(f.Allowed) == 0 && f.Pattern == "" {
			errs = append(errs, errors.New("customers: needs allowed, pattern or both"))
		}
		if f.Pattern != "" {
			if _, err := regexp.Compile(f.Pattern); err != nil {
				errs = append(errs, fmt.Errorf("customers.pattern: %w", err))
			}
		}
	}
	for role, field := range required {
		if field == "" {
			errs = append(errs, fmt.Errorf("mapping.%s is required for %s streams", role, s.Kind))
		}
	}
	if err := s.validatePII(); err != nil {
		errs = append(errs, err)
	}
	core := map[string]bool{}
	for _, c := range coreColumns(s.Kind) {
		core[c.Name] = true
	}
	seen := map[string]bool{}
	for _, d := range s.Dimensions {
		if err := ValidIdent(d.Name); err != nil {
			errs = append(errs, fmt.Errorf("dimension %q: %w", d.Name, err))
		}
		if core[d.Name] || seen[d.Name] || (len(d.Name) > 0 && d.Name[0] == '_') {
			errs = append(errs, fmt.Errorf("dimension %q: name is taken or reserved", d.Name))
		}
		seen[d.Name] = true
		if _, ok := dimensionTypes[d.Type]; !ok {
			errs = append(errs, fmt.Errorf("dimension %q: unknown type %q", d.Name, d.Type))
		}
		if d.Field == "" {
			errs = append(errs, fmt.Errorf("dimension %q: field is required", d.Name))
		}
	}
	return errors.Join(errs...)
}

// ConsentCustomer is how the consent tables record a customer: its hash under the
// loop's key when every stream hashes customer ids, else the id itself.
func (c Config) ConsentCustomer(customer string) string {
	if c.ConsentHashed() {
		return HashPII(c.HMACKey, []byte(customer))
	}
	return customer
}

// Columns returns the raw table's columns in insert order: core roles, declared
// dimensions, then the source coordinates.
func (s StreamConfig) Columns() []Column {
	cols := coreColumns(s.Kind)
	for _, d := range s.Dimensions {
		t := dimensionTypes[d.Type]
		if d.Nullable {
			t = "Nullable(" + t + ")"
		}
		cols = append(cols, Column{d.Name, t})
	}
	return append(cols, SourceColumns...)
}
