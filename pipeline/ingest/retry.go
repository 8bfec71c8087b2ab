package ingest

import (
	"context"
	"errors"

	"customerloop.dev/customerloop/pipeline/connect"
)

// retry runs fn until it succeeds or ctx ends, backing off between attempts and counting
// each failure as an error of the given stage.
func (w *Worker) retry(ctx context.Context, stage, what string, fn func() error) error {
	return connect.Retry(ctx, w.log, what, func() error {
		err := fn()
		if unsynced := (*UnsyncedShardError)(nil); errors.As(err, &unsynced) {
			w.metrics.Errors.WithLabelValues(w.cfg.Loop, StageReplicaSync).Inc()
		} else if err != nil {
			w.metrics.Errors.WithLabelValues(w.cfg.Loop, stage).Inc()
		}
		return err
	})
}
