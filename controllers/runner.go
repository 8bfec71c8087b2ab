package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"

	loopsv1alpha1 "customerloop.dev/customerloop/api/v1alpha1"
	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/ingest"
)

// Runner runs the workers of each loop.
type Runner interface {
	// Ensure makes the loop's workers run the given config, as many as the loop asks for
	// (none when paused), restarting them if it changed, and reports their state.
	Ensure(ctx context.Context, loop *loopsv1alpha1.CustomerLoop, cfg pipeline.Config) (WorkerState, error)
	// Stop stops the loop's workers and returns once they are gone.
	Stop(ctx context.Context, key types.NamespacedName) error
	// Quiesce stops the loop's workers and reports what is still running: empty once no
	// worker of the loop can insert anything (each flushed what it held and left), or
	// what it waits for. Ensure starts them again.
	Quiesce(ctx context.Context, key types.NamespacedName) (waitingFor string, err error)
}

// WorkerState is what a runner knows about a loop's workers.
type WorkerState struct {
	Running  bool   // as many as asked for run and none is failing
	Message  string // why not, for status
	Replicas int32  // workers running, for the scale subresource
	Selector string // label selector of the worker pods, for the scale subresource
}

// InProcessRunner runs each loop's worker as goroutines of this process: for single-node
// and local use. It is a manager.Runnable so that the manager's shutdown stops them.
type InProcessRunner struct {
	Log     logr.Logger
	Metrics *ingest.Metrics

	mu    sync.Mutex
	base  context.Context
	stop  context.CancelFunc
	loops map[types.NamespacedName]*inProcessLoop
}

type inProcessLoop struct {
	hash   string
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	lastErr error
}

// NewInProcessRunner returns a runner whose workers live until Stop or the end of Start.
// Their metrics are recorded in metrics (which may be nil).
func NewInProcessRunner(log logr.Logger, metrics *ingest.Metrics) *InProcessRunner {
	ctx, cancel := context.WithCancel(context.Background())
	return &InProcessRunner{Log: log, Metrics: metrics, base: ctx, stop: cancel, loops: map[types.NamespacedName]*inProcessLoop{}}
}

// Start blocks until ctx ends, then stops every worker.
func (r *InProcessRunner) Start(ctx context.Context) error {
	<-ctx.Done()
	r.mu.Lock()
	keys := make([]types.NamespacedName, 0, len(r.loops))
	for k := range r.loops {
		keys = append(keys, k)
	}
	r.mu.Unlock()
	for _, k := range keys {
		_ = r.Stop(context.Background(), k)
	}
	r.stop()
	return nil
}

// configHash identifies a config, credentials included, without keeping them: a rotated
// Secret restarts the worker.
func configHash(cfg pipeline.Config) string {
	b, _ := json.Marshal(cfg)
	h := sha256.New()
	h.Write(b)
	for _, v := range []string{cfg.ClickHouse.Username, cfg.ClickHouse.Password} {
		h.Write([]byte{0})
		h.Write([]byte(v))
	}
	if s := cfg.Kafka.SASL; s != nil {
		for _, v := range []string{s.Username, s.Password} {
			h.Write([]byte{0})
			h.Write([]byte(v))
		}
	}
	for _, t := range []*pipeline.TLSConfig{cfg.Kafka.TLS, cfg.ClickHouse.TLS} {
		if t != nil {
			for _, v := range [][]byte{t.CAPEM, t.CertPEM, t.KeyPEM} {
				h.Write([]byte{0})
				h.Write(v)
			}
		}
	}
	h.Write([]byte{0})
	h.Write(cfg.HMACKey)
	return hex.EncodeToString(h.Sum(nil))
}

// Ensure implements Runner. One worker runs per loop whatever its replicas: in-process
// workers are for single-node and local use.
func (r *InProcessRunner) Ensure(ctx context.Context, loop *loopsv1alpha1.CustomerLoop, cfg pipeline.Config) (WorkerState, error) {
	key := types.NamespacedName{Namespace: loop.Namespace, Name: loop.Name}
	if loop.GetReplicas() == 0 {
		return WorkerState{Message: "no worker runs: replicas is 0"}, r.Stop(ctx, key)
	}
	hash := configHash(cfg)
	r.mu.Lock()
	cur := r.loops[key]
	r.mu.Unlock()
	if cur != nil && cur.hash != hash {
		r.Log.Info("config changed; restarting worker", "loop", key)
		_ = r.Stop(ctx, key)
		cur = nil
	}
	if cur == nil {
		cur = r.start(key, cfg, hash)
	}
	cur.mu.Lock()
	defer cur.mu.Unlock()
	if cur.lastErr != nil {
		return WorkerState{Message: "worker failing: " + cur.lastErr.Error()}, nil
	}
	return WorkerState{Running: true, Replicas: 1}, nil
}

func (r *InProcessRunner) start(key types.NamespacedName, cfg pipeline.Config, hash string) *inProcessLoop {
	ctx, cancel := context.WithCancel(r.base)
	l := &inProcessLoop{hash: hash, cancel: cancel, done: make(chan struct{})}
	r.mu.Lock()
	r.loops[key] = l
	r.mu.Unlock()
	log := r.Log.WithValues("loop", key.String())
	go func() {
		defer close(l.done)
		delay := time.Second
		for {
			w, err := ingest.NewWorker(ctx, cfg, log, r.Metrics)
			if err == nil {
				l.setErr(nil)
				err = w.Run(ctx)
				_ = w.Close()
			}
			if ctx.Err() != nil {
				return
			}
			l.setErr(err)
			log.Error(err, "worker exited; restarting", "in", delay)
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(delay*2, time.Minute)
		}
	}()
	return l
}

func (l *inProcessLoop) setErr(err error) {
	l.mu.Lock()
	l.lastErr = err
	l.mu.Unlock()
}

// Quiesce implements Runner: Stop returns once the worker flushed, committed and left.
func (r *InProcessRunner) Quiesce(ctx context.Context, key types.NamespacedName) (string, error) {
	return "", r.Stop(ctx, key)
}

// Stop implements Runner.
func (r *InProcessRunner) Stop(_ context.Context, key types.NamespacedName) error {
	r.mu.Lock()
	l := r.loops[key]
	delete(r.loops, key)
	r.mu.Unlock()
	if l == nil {
		return nil
	}
	l.cancel()
	<-l.done
	r.Log.Info("worker stopped", "loop", key)
	return nil
}
