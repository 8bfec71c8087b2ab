package main

// The CPU time a cluster run costs its processes: the nodes, ZooKeeper and the bench.

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clusterPIDs finds the processes listening on the nodes' and ZooKeeper's ports, to read
// their CPU time; a process not found (another user's, another machine's) is left out.
func clusterPIDs(addrs []string, zookeeper string) (nodes []int, zk int) {
	for _, a := range addrs {
		if pid := listener(a); pid != 0 {
			nodes = append(nodes, pid)
		}
	}
	return nodes, listener(zookeeper)
}

// listener returns the pid of the process listening on addr's TCP port, or 0.
func listener(addr string) int {
	_, p, ok := strings.Cut(addr, ":")
	port, err := strconv.ParseUint(p, 10, 16)
	if !ok || err != nil {
		return 0
	}
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" { // LISTEN
				continue
			}
			if _, hex, ok := strings.Cut(fields[1], ":"); ok {
				if v, err := strconv.ParseUint(hex, 16, 16); err == nil && v == port {
					inodes["socket:["+fields[9]+"]"] = true
				}
			}
		}
		fh.Close()
	}
	if len(inodes) == 0 {
		return 0
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range procs {
		fds, _ := os.ReadDir(filepath.Join(dir, "fd"))
		for _, fd := range fds {
			if link, err := os.Readlink(filepath.Join(dir, "fd", fd.Name())); err == nil && inodes[link] {
				pid, _ := strconv.Atoi(filepath.Base(dir))
				return pid
			}
		}
	}
	return 0
}

// listenPorts returns the TCP ports a process listens on.
func listenPorts(pid int) []uint64 {
	if pid == 0 {
		return nil
	}
	mine := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		if link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && strings.HasPrefix(link, "socket:[") {
			mine[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	var ports []uint64
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			fields := strings.Fields(line)
			if len(fields) < 10 || fields[3] != "0A" || !mine[fields[9]] {
				continue
			}
			if _, hex, ok := strings.Cut(fields[1], ":"); ok {
				if v, err := strconv.ParseUint(hex, 16, 16); err == nil && !slices.Contains(ports, v) {
					ports = append(ports, v)
				}
			}
		}
	}
	return ports
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on Linux.
const clockTicks = 100

// cpuOf sums the user and system CPU seconds of the processes (0 for a pid of 0).
func cpuOf(pids ...int) float64 {
	var total float64
	for _, pid := range pids {
		if pid == 0 {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The fields after the command name, which may hold spaces: state is field 3,
		// utime and stime are fields 14 and 15.
		rest := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(rest) < 13 {
			continue
		}
		u, _ := strconv.ParseFloat(rest[11], 64)
		s, _ := strconv.ParseFloat(rest[12], 64)
		total += (u + s) / clockTicks
	}
	return total
}

// selfCPU is this process's CPU time so far: kfake serving the workers, and the polling.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
