package customer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ingest"
)

// MaxPlanBody is the largest plan a customer may submit, in bytes.
const MaxPlanBody = 4096

// PlanRequest is a plan as a customer submits it to the channel. The customer is the
// token's, never the body's: a body that names a customer is refused.
type PlanRequest struct {
	Product string `json:"product"`
	// Period is any day of the planned period, YYYY-MM-DD.
	Period   string  `json:"period"`
	Quantity float64 `json:"quantity"`
	// Confidence, when given, is between 0 and 1.
	Confidence *float64 `json:"confidence,omitempty"`
	// PlanID names the plan; without it the plan is the customer's channel plan for
	// the product and period, so that each submission revises the last.
	PlanID string `json:"planId,omitempty"`
}

// PlanAccepted is what the channel answers to an accepted plan.
type PlanAccepted struct {
	PlanID      string    `json:"planId"`
	Product     string    `json:"product"`
	Period      string    `json:"period"`
	Quantity    float64   `json:"quantity"`
	Confidence  *float64  `json:"confidence,omitempty"`
	SubmittedAt time.Time `json:"submittedAt"`
}

// PlanError is a refused plan: the reason is one of the dead-letter reasons
// (docs/messages.md) or "invalid_request", and the message says what to change.
type PlanError struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

func (e *PlanError) Error() string { return e.Reason + ": " + e.Message }

// MessageWriter produces messages to the loop's plan topic (a *kafka.Writer).
type MessageWriter interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// Planner turns customers' plans into messages of the loop's plan stream, checked by the
// decoder the stream's workers use, and produces them.
type Planner struct {
	stream  pipeline.StreamConfig
	decoder *ingest.Decoder
	writer  MessageWriter
	key     []byte
	now     func() time.Time
}

// NewPlanner returns a planner for the plan stream s, producing through w. hmacKey is the
// loop's key for hashed customer ids (the messages are keyed by the stored id, so that a
// customer's plans stay in one partition and a clear id hashed by the stream is not put
// in the key).
func NewPlanner(s pipeline.StreamConfig, w MessageWriter, hmacKey []byte) (*Planner, error) {
	if s.Kind != pipeline.KindPlan {
		return nil, fmt.Errorf("stream %s is not a plan stream", s.Name)
	}
	m := s.Mapping
	if m.PlanID == "" || m.CustomerID == "" || m.Product == "" || m.Period == "" || m.Quantity == "" {
		return nil, fmt.Errorf("plan stream %s: the mapping lacks a plan id, customer, product, period or quantity field", s.Name)
	}
	d, err := ingest.NewDecoder(s, ingest.WithHMACKey(hmacKey))
	if err != nil {
		return nil, err
	}
	return &Planner{stream: s, decoder: d, writer: w, key: hmacKey, now: time.Now}, nil
}

// DecodePlanRequest reads a plan request body: one JSON object of PlanRequest's fields
// and no others, at most MaxPlanBody bytes.
func DecodePlanRequest(body io.Reader) (PlanRequest, error) {
	b, err := io.ReadAll(io.LimitReader(body, MaxPlanBody+1))
	if err != nil {
		return PlanRequest{}, &PlanError{"invalid_request", "the body could not be read"}
	}
	if len(b) > MaxPlanBody {
		return PlanRequest{}, &PlanError{"invalid_request", fmt.Sprintf("the body is larger than %d bytes", MaxPlanBody)}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var p PlanRequest
	if err := dec.Decode(&p); err != nil {
		return PlanRequest{}, &PlanError{"invalid_request", "the body is not a plan: " + plainJSONError(err)}
	}
	if dec.More() {
		return PlanRequest{}, &PlanError{"invalid_request", "the body holds more than one JSON value"}
	}
	return p, nil
}

// plainJSONError says what encoding/json found, without echoing the input.
func plainJSONError(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("invalid JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		return fmt.Sprintf("field %q must be a %s", typ.Field, typ.Type.String())
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ") + " (the customer is the token's)"
	default:
		return "invalid JSON"
	}
}

// Submit checks the plan of customer (the token's, in clear) as the stream's workers
// would and produces it to the plan topic. A plan the workers would dead-letter is
// refused with a *PlanError and produced nowhere.
func (p *Planner) Submit(ctx context.Context, customer string, req PlanRequest) (PlanAccepted, error) {
	period, err := time.Parse(time.DateOnly, req.Period)
	if err != nil {
		return PlanAccepted{}, &PlanError{"invalid_request", "period must be a date, YYYY-MM-DD"}
	}
	if math.IsNaN(req.Quantity) || math.IsInf(req.Quantity, 0) {
		return PlanAccepted{}, &PlanError{string(pipeline.ReasonOutOfRange), "quantity must be a finite number"}
	}
	id := req.PlanID
	if id == "" {
		id = "channel-" + req.Product + "-" + period.Format(time.DateOnly)
	}
	now := p.now().UTC().Truncate(time.Second)
	m := p.stream.Mapping
	doc := map[string]any{}
	set := func(path string, v any) {
		if path == "" {
			return
		}
		parts := strings.Split(path, ".")
		cur := doc
		for _, k := range parts[:len(parts)-1] {
			next, ok := cur[k].(map[string]any)
			if !ok {
				next = map[string]any{}
				cur[k] = next
			}
			cur = next
		}
		cur[parts[len(parts)-1]] = v
	}
	set(m.PlanID, id)
	set(m.CustomerID, customer)
	set(m.Product, req.Product)
	set(m.Period, period.Format(time.DateOnly))
	set(m.Quantity, req.Quantity)
	set(m.SubmittedAt, now.Format(time.RFC3339))
	if req.Confidence != nil {
		if m.Confidence == "" {
			return PlanAccepted{}, &PlanError{"invalid_request", "this loop's plans carry no confidence"}
		}
		set(m.Confidence, *req.Confidence)
	}
	value, err := json.Marshal(doc)
	if err != nil {
		return PlanAccepted{}, err
	}
	if _, err := p.decoder.Decode(value, now); err != nil {
		var de *pipeline.DecodeError
		if errors.As(err, &de) {
			return PlanAccepted{}, &PlanError{string(de.Reason), de.Error()}
		}
		return PlanAccepted{}, &PlanError{string(pipeline.ReasonInvalidJSON), err.Error()}
	}
	key := p.stream.StoredCustomer(p.key, customer)
	if err := p.writer.WriteMessages(ctx, kafka.Message{Key: []byte(key), Value: value, Time: now}); err != nil {
		return PlanAccepted{}, fmt.Errorf("producing the plan to %s: %w", p.stream.Topic, err)
	}
	return PlanAccepted{PlanID: id, Product: req.Product, Period: period.Format(time.DateOnly), Quantity: req.Quantity,
		Confidence: req.Confidence, SubmittedAt: now}, nil
}
