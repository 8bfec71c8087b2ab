package pipeline

import (
	"bytes"
	"fmt"
)

// MaxIDLength bounds ids, customers and products; longer values are input errors, not data.
const MaxIDLength = 256

// Limits bound what one message may make the decoder do. They are checked in one pass
// over the message before it is parsed, so a hostile message costs its length and no
// memory. A violation dead-letters the message as oversize.
type Limits struct {
	// MaxFields is the most object keys in the whole message, nested ones included.
	MaxFields int `json:"maxFields,omitempty"`
	// MaxStringBytes is the longest string (key or value) as written, escapes included.
	MaxStringBytes int `json:"maxStringBytes,omitempty"`
	// MaxDepth is the deepest nesting of objects and arrays.
	MaxDepth int `json:"maxDepth,omitempty"`
}

// Defaults of Limits.
const (
	DefaultMaxFields      = 1000
	DefaultMaxStringBytes = 64 << 10
	DefaultMaxDepth       = 32
)

func (l Limits) WithDefaults() Limits {
	if l.MaxFields <= 0 {
		l.MaxFields = DefaultMaxFields
	}
	if l.MaxStringBytes <= 0 {
		l.MaxStringBytes = DefaultMaxStringBytes
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultMaxDepth
	}
	return l
}

func oversize(format string, args ...any) *DecodeError {
	return &DecodeError{Reason: ReasonOversize, Err: fmt.Errorf(format, args...)}
}

// Check scans msg as JSON tokens without parsing it: strings are skipped with their
// escapes, brackets counted for depth, colons outside strings counted as object keys.
// A malformed message passes if it is within the limits; the parser refuses it after.
func (l Limits) Check(msg []byte) error {
	if l.PlainlyWithin(msg) {
		return nil
	}
	return l.Scan(msg)
}

// PlainlyWithin reports whether msg is within the limits however its bytes are read: no
// longer than the longest string allowed, and with no more brackets or colons anywhere,
// inside strings too, than the depth and the fields allowed. Counting bytes is a fraction
// of the scan's cost, and almost every message passes this way.
func (l Limits) PlainlyWithin(msg []byte) bool {
	return len(msg) <= l.MaxStringBytes &&
		bytes.Count(msg, colon) <= l.MaxFields &&
		bytes.Count(msg, openBrace)+bytes.Count(msg, openBracket) <= l.MaxDepth
}

var colon, openBrace, openBracket = []byte{':'}, []byte{'{'}, []byte{'['}

// Scan is Check's token scan.
func (l Limits) Scan(msg []byte) error {
	depth, fields := 0, 0
	for i := 0; i < len(msg); i++ {
		switch msg[i] {
		case '"':
			start := i + 1
			i = StringEnd(msg, start)
			if n := min(i, len(msg)) - start; n > l.MaxStringBytes {
				return oversize("a string of %d bytes exceeds the limit of %d", n, l.MaxStringBytes)
			}
		case '{', '[':
			if depth++; depth > l.MaxDepth {
				return oversize("nesting deeper than the limit of %d levels", l.MaxDepth)
			}
		case '}', ']':
			depth--
		case ':':
			if fields++; fields > l.MaxFields {
				return oversize("more than the limit of %d fields", l.MaxFields)
			}
		}
	}
	return nil
}

// StringEnd returns the index of the quote that closes the string starting at start (or
// len(msg) when none does), skipping escaped characters. It jumps from quote to quote:
// most of a message's bytes are in strings, and bytes.IndexByte is much faster than a
// loop over them.
func StringEnd(msg []byte, start int) int {
	i := start
	for {
		q := bytes.IndexByte(msg[i:], '"')
		if q < 0 {
			return len(msg)
		}
		q += i
		// The quote is escaped when an odd number of backslashes precede it.
		b := 0
		for j := q - 1; j >= start && msg[j] == '\\'; j-- {
			b++
		}
		if b%2 == 0 {
			return q
		}
		i = q + 1
	}
}
