// Package docs tests that the documentation says what the code does: the example
// messages decode (or fail) as documented, the JSON Schemas require what the decoder
// requires, the operations page names the real metrics and condition reasons, and every
// command line in a ```sh or ```console block names real subcommands and flags. That
// docs/reference.md is fresh is `make verify`'s job.
package docs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	goruntime "runtime"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/yaml"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/controllers"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ingest"
)

// repoRoot is the repository's top directory, found from this file.
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := goruntime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test file")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// docFiles are README.md and every page under docs/, relative to the repository.
func docFiles(t testing.TB) []string {
	t.Helper()
	pages, err := filepath.Glob(filepath.Join(repoRoot(t), "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files := []string{"README.md"}
	for _, p := range pages {
		files = append(files, filepath.Join("docs", filepath.Base(p)))
	}
	sort.Strings(files[1:])
	return files
}

// sampleStreams renders every sample loop into the pipeline config its workers would run,
// through the controller's own controllers.LoopConfig, and returns the streams by topic.
// The Secrets the secure sample names are stand-ins: only their presence matters here.
func sampleStreams(t testing.TB) map[string]pipeline.StreamConfig {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := loopsv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	secret := func(name string, data map[string]string) *corev1.Secret {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name}, Data: map[string][]byte{}}
		for k, v := range data {
			s.Data[k] = []byte(v)
		}
		return s
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(
		secret("kafka-ca", map[string]string{"ca.crt": standInCA(t)}),
		secret("kafka-user", map[string]string{"username": "u", "password": "p"}),
		secret("clickhouse-credentials", map[string]string{"user": "u", "password": "p"}),
	).Build()

	// The samples that run standalone, and those in directories of their own (secure/,
	// cluster/) because they need Secrets or a ClickHouse cluster.
	var samples []string
	for _, pattern := range []string{"loops_*.yaml", "*/loops_*.yaml"} {
		found, err := filepath.Glob(filepath.Join(repoRoot(t), "config", "samples", pattern))
		if err != nil {
			t.Fatal(err)
		}
		samples = append(samples, found...)
	}
	if len(samples) < 4 {
		t.Fatalf("found %d samples under config/samples, want at least 4", len(samples))
	}
	streams := map[string]pipeline.StreamConfig{}
	for _, path := range samples {
		var loop loopsv1alpha1.CustomerLoop
		if err := yaml.UnmarshalStrict([]byte(readFile(t, path)), &loop); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		loop.Namespace = "default"
		cfg, err := controllers.LoopConfig(context.Background(), c, &loop)
		if err != nil {
			t.Fatalf("%s: rendering the pipeline config: %v", path, err)
		}
		for _, s := range cfg.Streams {
			streams[s.Topic] = s
		}
	}
	return streams
}

// standInCA is a self-signed CA certificate, PEM: the controller refuses a CA bundle
// that holds none.
func standInCA(t testing.TB) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "stand-in CA"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// sampleStream returns the named stream of the sample loop the message docs describe.
func sampleStream(t testing.TB, streams map[string]pipeline.StreamConfig, name string) pipeline.StreamConfig {
	t.Helper()
	s, ok := streams["acme."+name]
	if !ok || s.Name != name {
		t.Fatalf("the sample loop acme has no stream %q on topic acme.%s", name, name)
	}
	return s
}

// example is one message shown in docs/messages.md under an annotation
// "<!-- accepted: STREAM -->" or "<!-- rejected: STREAM REASON -->".
type example struct {
	line    int
	stream  string
	accept  bool
	reason  pipeline.Reason
	message string
}

var exampleRe = regexp.MustCompile("(?s)<!-- (accepted|rejected): ([a-z_]+)(?: ([a-z_]+))? -->\\s*\n```json\n(.*?)```")

func messageExamples(t testing.TB, doc string) []example {
	t.Helper()
	var out []example
	for _, m := range exampleRe.FindAllStringSubmatchIndex(doc, -1) {
		line := strings.Count(doc[:m[0]], "\n") + 1
		kind, stream := doc[m[2]:m[3]], doc[m[4]:m[5]]
		var reason string
		if m[6] >= 0 {
			reason = doc[m[6]:m[7]]
		}
		if (kind == "rejected") != (reason != "") {
			t.Fatalf("docs/messages.md:%d: %q needs a reason exactly when rejected", line, doc[m[0]:m[1]])
		}
		for i, msg := range strings.Split(strings.TrimRight(doc[m[8]:m[9]], "\n"), "\n") {
			if strings.TrimSpace(msg) == "" {
				continue
			}
			out = append(out, example{line: line + 2 + i, stream: stream, accept: kind == "accepted", reason: pipeline.Reason(reason), message: msg})
		}
	}
	return out
}

func decode(t testing.TB, s pipeline.StreamConfig, msg string) error {
	t.Helper()
	d, err := ingest.NewDecoder(s)
	if err != nil {
		t.Fatalf("stream %s: %v", s.Name, err)
	}
	_, err = d.Decode([]byte(msg), msgTime)
	return err
}

// msgTime stands for the Kafka message's timestamp.
var msgTime = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

// The examples of docs/messages.md decode as it says: accepted ones into a row of the
// sample loop's stream, rejected ones with the documented dead-letter reason.
func TestMessageExamples(t *testing.T) {
	root := repoRoot(t)
	doc := readFile(t, filepath.Join(root, "docs", "messages.md"))
	streams := sampleStreams(t)
	examples := messageExamples(t, doc)
	if len(examples) < 10 {
		t.Fatalf("found %d annotated examples in docs/messages.md; the annotations may have changed shape", len(examples))
	}
	shown := map[pipeline.Reason]bool{}
	for _, ex := range examples {
		s := sampleStream(t, streams, ex.stream)
		err := decode(t, s, ex.message)
		switch {
		case ex.accept && err != nil:
			t.Errorf("docs/messages.md:%d: documented as accepted by %s, decoder says: %v\n%s", ex.line, ex.stream, err, ex.message)
		case !ex.accept:
			de, ok := err.(*pipeline.DecodeError)
			if !ok {
				t.Errorf("docs/messages.md:%d: documented as rejected (%s) by %s, decoder says: %v\n%s", ex.line, ex.reason, ex.stream, err, ex.message)
				continue
			}
			if de.Reason != ex.reason {
				t.Errorf("docs/messages.md:%d: documented reason %s, decoder's is %s (%v)\n%s", ex.line, ex.reason, de.Reason, de, ex.message)
			}
			shown[de.Reason] = true
		}
	}
	// Every reason the decoder gives has an example; oversize is decided before decoding
	// and unknown_customer needs a restricted stream, which the sample has not.
	for _, r := range []pipeline.Reason{pipeline.ReasonInvalidJSON, pipeline.ReasonMissingField, pipeline.ReasonWrongType, pipeline.ReasonOutOfRange} {
		if !shown[r] {
			t.Errorf("docs/messages.md shows no message rejected as %s", r)
		}
	}
	// Every reason is in the page's table of reasons.
	for _, r := range []pipeline.Reason{pipeline.ReasonInvalidJSON, pipeline.ReasonMissingField, pipeline.ReasonWrongType,
		pipeline.ReasonOutOfRange, pipeline.ReasonOversize, pipeline.ReasonUnknownCustomer} {
		if !strings.Contains(doc, "| `"+string(r)+"` |") {
			t.Errorf("docs/messages.md's table of reasons lacks %s", r)
		}
	}
}

var kcatProduceRe = regexp.MustCompile(`echo '([^']*)'\s*(?:\\\n)?\s*\|\s*kcat ([^\n]*)`)
var kcatTopicRe = regexp.MustCompile(`(?:^|\s)-t\s+(\S+)`)
var deadLetteredRe = regexp.MustCompile(`#\s*dead-lettered:\s*([a-z_]+)`)

// Every message the docs and README produce with kcat is accepted by the sample loop
// that reads its topic: a reader who copies one sees it land, not dead-lettered. One
// annotated "# dead-lettered: REASON" must be rejected with that reason instead.
func TestKcatExamples(t *testing.T) {
	root := repoRoot(t)
	streams := sampleStreams(t)
	n := 0
	for _, f := range docFiles(t) {
		doc := readFile(t, filepath.Join(root, f))
		for _, m := range kcatProduceRe.FindAllStringSubmatchIndex(doc, -1) {
			line := strings.Count(doc[:m[0]], "\n") + 1
			msg, args := doc[m[2]:m[3]], doc[m[4]:m[5]]
			if !strings.Contains(" "+args+" ", " -P ") {
				continue
			}
			tm := kcatTopicRe.FindStringSubmatch(args)
			if tm == nil {
				t.Errorf("%s:%d: kcat produces without -t TOPIC", f, line)
				continue
			}
			s, ok := streams[tm[1]]
			if !ok {
				t.Errorf("%s:%d: topic %s is read by no sample loop in config/samples", f, line, tm[1])
				continue
			}
			n++
			err := decode(t, s, msg)
			if want := deadLetteredRe.FindStringSubmatch(args); want != nil {
				// A deliberately bad example, annotated "# dead-lettered: REASON".
				if de, ok := err.(*pipeline.DecodeError); !ok || string(de.Reason) != want[1] {
					t.Errorf("%s:%d: documented as dead-lettered (%s), decoder says: %v\n%s", f, line, want[1], err, msg)
				}
				continue
			}
			if err != nil {
				t.Errorf("%s:%d: the message sent to %s would be dead-lettered: %v\n%s", f, line, tm[1], err, msg)
			}
		}
	}
	if n < 3 {
		t.Errorf("found %d kcat examples; the pattern may no longer match how the docs write them", n)
	}
}

// The JSON Schemas require what the decoder requires: dropping a required property from
// an accepted example makes it a missing_field dead letter, dropping an optional one
// does not, and every property is a field the sample's mapping reads.
func TestSchemasMatchDecoder(t *testing.T) {
	root := repoRoot(t)
	streams := sampleStreams(t)
	examples := messageExamples(t, readFile(t, filepath.Join(root, "docs", "messages.md")))
	for _, tc := range []struct{ file, stream string }{
		{"usage-event.schema.json", "usage"},
		{"plan.schema.json", "plans"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			var schema struct {
				Schema     string         `json:"$schema"`
				Type       string         `json:"type"`
				Required   []string       `json:"required"`
				Properties map[string]any `json:"properties"`
			}
			if err := json.Unmarshal([]byte(readFile(t, filepath.Join(root, "docs", "schemas", tc.file))), &schema); err != nil {
				t.Fatal(err)
			}
			if schema.Schema != "https://json-schema.org/draft/2020-12/schema" || schema.Type != "object" {
				t.Fatalf("want a draft 2020-12 schema of an object, got $schema %q, type %q", schema.Schema, schema.Type)
			}
			s := sampleStream(t, streams, tc.stream)
			mapped := map[string]bool{}
			m := s.Mapping
			for _, f := range []string{m.CustomerID, m.Product, m.Quantity, m.EventID, m.Timestamp, m.PlanID, m.Period, m.SubmittedAt, m.Confidence} {
				if f != "" {
					mapped[strings.Split(f, ".")[0]] = true
				}
			}
			for _, d := range s.Dimensions {
				mapped[strings.Split(d.Field, ".")[0]] = true
			}
			for p := range schema.Properties {
				if !mapped[p] {
					t.Errorf("property %q is no field of the %s stream's mapping", p, tc.stream)
				}
			}
			for p := range mapped {
				if _, ok := schema.Properties[p]; !ok {
					t.Errorf("the %s stream reads %q, the schema does not describe it", tc.stream, p)
				}
			}
			var full map[string]json.RawMessage
			for _, ex := range examples {
				if ex.stream != tc.stream || !ex.accept {
					continue
				}
				var obj map[string]json.RawMessage
				if err := json.Unmarshal([]byte(ex.message), &obj); err != nil {
					t.Fatal(err)
				}
				if len(obj) > len(full) {
					full = obj
				}
			}
			if full == nil {
				t.Fatalf("no accepted %s example to check against", tc.stream)
			}
			required := map[string]bool{}
			for _, r := range schema.Required {
				required[r] = true
			}
			for p := range full {
				without := map[string]json.RawMessage{}
				for k, v := range full {
					if k != p {
						without[k] = v
					}
				}
				js, err := json.Marshal(without)
				if err != nil {
					t.Fatal(err)
				}
				err = decode(t, s, string(js))
				de, _ := err.(*pipeline.DecodeError)
				switch {
				case required[p] && (de == nil || de.Reason != pipeline.ReasonMissingField):
					t.Errorf("schema requires %q, but the decoder accepts a message without it (%v)", p, err)
				case !required[p] && err != nil:
					t.Errorf("schema makes %q optional, but without it the decoder says: %v", p, err)
				}
			}
		})
	}
}
