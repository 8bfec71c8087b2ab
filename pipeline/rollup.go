package pipeline

// RollupGranularity is the length of a rollup's periods, in UTC.
type RollupGranularity string

const (
	RollupHour  RollupGranularity = "Hour"
	RollupDay   RollupGranularity = "Day"
	RollupWeek  RollupGranularity = "Week"
	RollupMonth RollupGranularity = "Month"
)

// RollupFunction is how a measure aggregates its field.
type RollupFunction string

const (
	FuncCount     RollupFunction = "Count"
	FuncSum       RollupFunction = "Sum"
	FuncMin       RollupFunction = "Min"
	FuncMax       RollupFunction = "Max"
	FuncUniq      RollupFunction = "Uniq"
	FuncQuantiles RollupFunction = "Quantiles"
)

// RollupConfig declares one aggregate of a stream per period and dimensions.
type RollupConfig struct {
	Name        string            `json:"name"`
	Stream      string            `json:"stream"`
	Dimensions  []string          `json:"dimensions,omitempty"`
	Granularity RollupGranularity `json:"granularity"`
	Measures    []MeasureConfig   `json:"measures"`
	// PointReads orders the rollup's groups by their dimensions before the period, in
	// small granules, so that reading one customer's groups reads little else. The
	// feedback's own rollups set it; no spec can.
	PointReads bool `json:"-"`
}

// MeasureConfig is one aggregated column of a rollup.
type MeasureConfig struct {
	Name      string         `json:"name"`
	Function  RollupFunction `json:"function"`
	Field     string         `json:"field,omitempty"`
	Quantiles []string       `json:"quantiles,omitempty"`
}
