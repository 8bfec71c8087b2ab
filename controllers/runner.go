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

	"customerloop.dev/customerloop/pipeline"
)

// Runner runs the workers of each loop.
type Runner interface {
	// Ensure makes the loop's workers run the given config, restarting them if it changed,
	// and reports their state.
	Ensure(key types.NamespacedName, cfg pipeline.Config) WorkerState
	// Stop stops the loop's workers and returns once they are gone.
	Stop(key types.NamespacedName)
}

// WorkerState is what a runner knows about a loop's workers.
type WorkerState struct {
	Running bool   // started and not failing
	Message string // why not, for status
}

// InProcessRunner runs each loop's worker as goroutines of this process: for single-node
// and local use. It is a manager.Runnable so that the manager's shutdown stops them.
type InProcessRunner struct {
	Log     logr.Logger
	Metrics *pipeline.Metrics

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
func NewInProcessRunner(log logr.Logger, metrics *pipeline.Metrics) *InProcessRunner {
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
		r.Stop(k)
	}
	r.stop()
	return nil
}

// configHash identifies a config, credentials included, without keeping them.
func configHash(cfg pipeline.Config) string {
	b, _ := json.Marshal(cfg)
	h := sha256.New()
	h.Write(b)
	h.Write([]byte{0})
	h.Write([]byte(cfg.ClickHouse.Password))
	return hex.EncodeToString(h.Sum(nil))
}

// Ensure implements Runner.
func (r *InProcessRunner) Ensure(key types.NamespacedName, cfg pipeline.Config) WorkerState {
	hash := configHash(cfg)
	r.mu.Lock()
	cur := r.loops[key]
	r.mu.Unlock()
	if cur != nil && cur.hash != hash {
		r.Log.Info("config changed; restarting worker", "loop", key)
		r.Stop(key)
		cur = nil
	}
	if cur == nil {
		cur = r.start(key, cfg, hash)
	}
	cur.mu.Lock()
	defer cur.mu.Unlock()
	if cur.lastErr != nil {
		return WorkerState{Message: "worker failing: " + cur.lastErr.Error()}
	}
	return WorkerState{Running: true}
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
			w, err := pipeline.NewWorker(ctx, cfg, log, r.Metrics)
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

// Stop implements Runner.
func (r *InProcessRunner) Stop(key types.NamespacedName) {
	r.mu.Lock()
	l := r.loops[key]
	delete(r.loops, key)
	r.mu.Unlock()
	if l == nil {
		return
	}
	l.cancel()
	<-l.done
	r.Log.Info("worker stopped", "loop", key)
}
