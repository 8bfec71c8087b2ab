package main

// What a drain cost around the worker: the ClickHouse server's CPU, this process's (the
// in-process broker, kfake, and the polling), the machine's busy and stolen time, and the
// worker's collections. Cheap enough to take in every round; read to explain why one
// round of the same run is slower than another.

import (
	"bufio"
	"os"
	"regexp"
	"strconv"
	"strings"
)

type drainDiag struct {
	drainSeconds float64
	// serverCPU and benchCPU are CPU seconds during the drain: the ClickHouse server's,
	// and this process's (kfake serving the fetches, the ledger polling).
	serverCPU, benchCPU float64
	// busy, steal and iowait are the machine's seconds during the drain over all cores
	// (/proc/stat); busy excludes steal. steal is the time the hypervisor gave to others.
	busy, steal, iowait float64
	// The worker's faults that read from disk, and its context switches: involuntary
	// ones are the scheduler taking a core away from it (the cores are contended).
	majorFaults, voluntary, involuntary float64
	// gcs, their stop-the-world pauses summed, and the GC's share of the worker's CPU at
	// the end (GODEBUG=gctrace=1).
	gcs, gcPauseMs, gcCPUPercent float64
}

type cpuSnapshot struct {
	server, self               float64
	busy, steal, iowait, total float64 // jiffies
}

func snapshot(serverPID int) cpuSnapshot {
	s := cpuSnapshot{server: cpuOf(serverPID), self: selfCPU()}
	f, err := os.Open("/proc/stat")
	if err != nil {
		return s
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if sc.Scan() {
		// cpu user nice system idle iowait irq softirq steal guest guest_nice
		fields := strings.Fields(sc.Text())
		v := make([]float64, len(fields))
		for i := 1; i < len(fields); i++ {
			v[i], _ = strconv.ParseFloat(fields[i], 64)
		}
		if len(v) > 8 {
			s.busy = v[1] + v[2] + v[3] + v[6] + v[7]
			s.iowait, s.steal = v[5], v[8]
		}
	}
	return s
}

// since is the difference of two snapshots, in seconds.
func (s cpuSnapshot) since(b cpuSnapshot) drainDiag {
	return drainDiag{
		serverCPU: s.server - b.server, benchCPU: s.self - b.self,
		busy: (s.busy - b.busy) / clockTicks, steal: (s.steal - b.steal) / clockTicks, iowait: (s.iowait - b.iowait) / clockTicks,
	}
}

// gcLine is a gctrace line: "gc 12 @1.234s 5%: 0.02+3.1+0.01 ms clock, ...".
var gcLine = regexp.MustCompile(`^gc \d+ @[0-9.]+s (\d+)%: ([0-9.]+)\+[0-9.]+\+([0-9.]+) ms clock`)

// gcFromLog counts the collections of a worker's log, sums their two stop-the-world
// phases, and returns the GC's CPU share since the start as of the last one.
func gcFromLog(path string) (n, pauseMs, cpuPercent float64) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := gcLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		n++
		a, _ := strconv.ParseFloat(m[2], 64)
		c, _ := strconv.ParseFloat(m[3], 64)
		pauseMs += a + c
		cpuPercent, _ = strconv.ParseFloat(m[1], 64)
	}
	return n, pauseMs, cpuPercent
}
