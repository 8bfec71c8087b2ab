package connect

import (
	"context"
	"fmt"
	"time"

	"github.com/go-logr/logr"
)

// Retry runs fn until it succeeds or ctx ends, backing off between attempts: quickly
// for a passing failure, every 30 s for one that lasts until the table or config is fixed.
func Retry(ctx context.Context, log logr.Logger, what string, fn func() error) error {
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
		if !Sleep(ctx, wait) {
			return fmt.Errorf("%s: %w (gave up: %w)", what, err, ctx.Err())
		}
	}
}

// Sleep waits d or until ctx ends; it reports whether the full wait happened.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// MergeDone returns a context that ends when either parent does.
func MergeDone(a, b context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(a)
	stop := context.AfterFunc(b, cancel)
	return ctx, func() { stop(); cancel() }
}
