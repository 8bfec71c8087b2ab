package ingest

import (
	"fmt"
	"math"
	"time"

	"customerloop.dev/customerloop/pipeline"
	"github.com/valyala/fastjson"
)

// The converters of times and dates: RFC 3339 strings, dates, epoch seconds or
// milliseconds, within what ClickHouse's DateTime and Date hold.

// DateTime in ClickHouse is seconds since the epoch in a UInt32.
var (
	minDateTime = time.Unix(0, 0).UTC()
	maxDateTime = time.Unix(math.MaxUint32, 0).UTC()
	// Date is days since the epoch in a UInt16; 2149-06-06 is its last day.
	maxDate = time.Date(2149, 6, 6, 0, 0, 0, 0, time.UTC)
)

// epochMillisThreshold separates epoch seconds from epoch milliseconds: 1e11 seconds is
// the year 5138, 1e11 milliseconds is 1973.
const epochMillisThreshold = 1e11

func parseTime(v *fastjson.Value, out *value) (time.Time, error) {
	switch v.Type() {
	case fastjson.TypeString:
		b, _ := v.StringBytes()
		t := bytesString(b)
		if ts, err := time.Parse(time.RFC3339Nano, t); err == nil {
			return ts.UTC(), nil
		}
		if ts, err := time.Parse(time.DateOnly, t); err == nil {
			return ts, nil
		}
		return time.Time{}, &pipeline.DecodeError{Reason: pipeline.ReasonWrongType, Err: fmt.Errorf("%q is not RFC 3339, a date or epoch seconds/milliseconds", b)}
	case fastjson.TypeNumber:
		n := numberText(v, out)
		f, err := parseFloat(n)
		if err != nil || !finite(f) {
			return time.Time{}, outOfRange("%s is not a usable epoch time", n)
		}
		if math.Abs(f) >= epochMillisThreshold {
			return time.UnixMilli(int64(f)).UTC(), nil
		}
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(frac*1e9)).UTC(), nil
	}
	return time.Time{}, wrongType(v, "a time (RFC 3339 string or epoch number)")
}

func toDateTime(v *fastjson.Value, out *value) error {
	ts, err := parseTime(v, out)
	if err != nil {
		return err
	}
	if ts.Before(minDateTime) || ts.After(maxDateTime) {
		return outOfRange("%s is outside ClickHouse DateTime (1970 to 2106)", ts.Format(time.RFC3339))
	}
	out.i = ts.Unix()
	return nil
}

func toDate(v *fastjson.Value, out *value) error {
	ts, err := parseTime(v, out)
	if err != nil {
		return err
	}
	d := time.Date(ts.Year(), ts.Month(), ts.Day(), 0, 0, 0, 0, time.UTC)
	if d.Before(minDateTime) || d.After(maxDate) {
		return outOfRange("%s is outside ClickHouse Date (1970 to 2149)", d.Format(time.DateOnly))
	}
	out.i = d.Unix()
	return nil
}
