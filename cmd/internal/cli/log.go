package cli

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/go-logr/logr"
)

// NewLogger returns a structured logger writing to w at the given level (debug, info,
// warn, error), as text or JSON.
func NewLogger(w io.Writer, level, format string) (logr.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return logr.Logger{}, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text", "":
		return logr.FromSlogHandler(slog.NewTextHandler(w, opts)), nil
	case "json":
		return logr.FromSlogHandler(slog.NewJSONHandler(w, opts)), nil
	}
	return logr.Logger{}, fmt.Errorf("--log-format %q: want text or json", format)
}
