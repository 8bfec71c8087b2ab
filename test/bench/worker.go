package main

// The customerloop worker binary as the runs start it, and what the kernel says it cost.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"customerloop.dev/customerloop/pipeline"
)

type workerRun struct {
	rate, cpuSeconds, rssMiB float64
	userSeconds, sysSeconds  float64 // the parts of cpuSeconds
	// pageFaults are the minor faults: each first touch of a page the kernel had to
	// hand over, much of the system time.
	pageFaults float64
	diag       drainDiag
}

// runWorker runs the customerloop worker binary until the ledger covers want messages,
// then stops it and reads its CPU time and peak RSS from the kernel.
func runWorker(ctx context.Context, o options, work string, cfg pipeline.Config, ch driver.Conn, want uint64) (workerRun, error) {
	var args []string
	if o.cpuProfile != "" && cfg.Streams[0].Name == "usage" {
		args = append(args, "--cpuprofile", o.cpuProfile)
	}
	heapTaken := o.heapAt == "" || cfg.Streams[0].Name != "usage"
	if !heapTaken {
		args = append(args, "--pprof-bind-address", "127.0.0.1:16060")
	}
	before := snapshot(o.serverPID)
	start := time.Now()
	// gctrace: a line per collection in the worker's log, read back by gcFromLog.
	cmd, logf, err := startWorker(o, work, cfg.Streams[0].Name, cfg, []string{"GODEBUG=gctrace=1"}, args...)
	if err != nil {
		return workerRun{}, err
	}
	defer logf.Close()
	deadline := start.Add(10 * time.Minute)
	q := "SELECT sum(messages) FROM " + pipeline.QualifiedTable(cfg.ClickHouse.Database, pipeline.LedgerTable) + " WHERE topic = ?"
	for {
		var n uint64
		if err := ch.QueryRow(ctx, q, cfg.Streams[0].Topic).Scan(&n); err != nil {
			return workerRun{}, err
		}
		if n >= want {
			break
		}
		if !heapTaken && n >= want/2 {
			heapTaken = true
			_ = saveURL("http://127.0.0.1:16060/debug/pprof/heap?debug=1", o.heapAt+".txt")
			if err := saveURL("http://127.0.0.1:16060/debug/pprof/heap", o.heapAt); err != nil {
				return workerRun{}, err
			}
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			return workerRun{}, fmt.Errorf("the worker did not drain %d messages in 10 minutes (at %d); log: %s", want, n, logf.Name())
		}
		time.Sleep(50 * time.Millisecond)
	}
	took := time.Since(start)
	after := snapshot(o.serverPID)
	// The peak RSS of the worker's own memory. rusage's maxrss is no use here: a child
	// started from this large process is charged this process's RSS at exec.
	hwm, err := peakRSS(cmd.Process.Pid)
	if err != nil {
		return workerRun{}, err
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		return workerRun{}, fmt.Errorf("worker exit: %w", err)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	d := after.since(before)
	d.drainSeconds = took.Seconds()
	d.majorFaults, d.voluntary, d.involuntary = float64(ru.Majflt), float64(ru.Nvcsw), float64(ru.Nivcsw)
	d.gcs, d.gcPauseMs, d.gcCPUPercent = gcFromLog(logf.Name())
	return workerRun{
		diag:        d,
		rate:        float64(want) / took.Seconds(),
		cpuSeconds:  cpu.Seconds(),
		userSeconds: time.Duration(ru.Utime.Nano()).Seconds(),
		sysSeconds:  time.Duration(ru.Stime.Nano()).Seconds(),
		rssMiB:      hwm,
		pageFaults:  float64(ru.Minflt),
	}, nil
}

// startWorker starts the customerloop worker binary on cfg, its config and log in work
// under name, with env added to this process's environment.
func startWorker(o options, work, name string, cfg pipeline.Config, env []string, args ...string) (*exec.Cmd, *os.File, error) {
	path := filepath.Join(work, name+".json")
	raw, _ := json.Marshal(cfg)
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		return nil, nil, err
	}
	logf, err := os.Create(filepath.Join(work, name+".log"))
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(o.bin, append([]string{"worker", "--config", path, "--metrics-bind-address", "0"}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, nil, err
	}
	return cmd, logf, nil
}

func saveURL(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

// peakRSS reads a process's VmHWM (its resident set's high-water mark) in MiB.
func peakRSS(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb float64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%f kB", &kb); err != nil {
				return 0, fmt.Errorf("VmHWM %q: %w", rest, err)
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}
