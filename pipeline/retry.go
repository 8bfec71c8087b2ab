package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-logr/logr"
)

// retry runs fn until it succeeds or ctx ends, backing off between attempts and counting
// each failure as an error of the given stage.
func (w *Worker) retry(ctx context.Context, stage, what string, fn func() error) error {
	return retry(ctx, w.log, what, func() error {
		err := fn()
		if unsynced := (*UnsyncedShardError)(nil); errors.As(err, &unsynced) {
			w.metrics.Errors.WithLabelValues(w.cfg.Loop, StageReplicaSync).Inc()
		} else if err != nil {
			w.metrics.Errors.WithLabelValues(w.cfg.Loop, stage).Inc()
		}
		return err
	})
}

func retry(ctx context.Context, log logr.Logger, what string, fn func() error) error {
	delay := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil {
			return nil
		}
		wait := delay
		if permanentError(err) {
			wait = 30 * time.Second
			log.Error(err, what+" failed and will keep failing until the table or config is fixed; retrying slowly", "attempt", attempt, "in", wait)
		} else {
			log.Error(err, what+" failed; retrying", "attempt", attempt, "in", wait)
			delay = min(delay*2, 10*time.Second)
		}
		if !sleep(ctx, wait) {
			return fmt.Errorf("%s: %w (gave up: %w)", what, err, ctx.Err())
		}
	}
}

// sleep waits d or until ctx ends; it reports whether the full wait happened.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// mergeDone returns a context that ends when either parent does.
func mergeDone(a, b context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(a)
	stop := context.AfterFunc(b, cancel)
	return ctx, func() { stop(); cancel() }
}
