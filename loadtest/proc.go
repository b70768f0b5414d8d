package main

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// procStats samples the CPU time and resident memory of a process tree from
// /proc while a run is going. CPU includes children the root has reaped
// (cutime, cstime), so short-lived workers such as Postfix's smtp processes
// are counted; peak RSS is the largest sum over the live tree in any sample.
type procStats struct {
	name string
	root int
	self bool // only the process itself: its children are measured apart

	mu       sync.Mutex
	startCPU float64
	lastCPU  float64
	peakRSS  int64
	stop     chan struct{}
	done     chan struct{}
}

var clockTicks = 100.0 // USER_HZ on Linux

func watchProcess(name string, pid int, self bool) *procStats {
	p := &procStats{name: name, root: pid, self: self, stop: make(chan struct{}), done: make(chan struct{})}
	p.startCPU, _ = p.sample()
	p.lastCPU = p.startCPU
	go p.loop()
	return p
}

func (p *procStats) loop() {
	defer close(p.done)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		cpu, rss := p.sample()
		p.mu.Lock()
		if cpu > p.lastCPU {
			p.lastCPU = cpu
		}
		p.peakRSS = max(p.peakRSS, rss)
		p.mu.Unlock()
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
	}
}

// finish stops sampling and returns CPU seconds used since watching began
// and the peak RSS in bytes.
func (p *procStats) finish() (cpuSeconds float64, peakRSS int64) {
	close(p.stop)
	<-p.done
	cpu, rss := p.sample()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lastCPU = max(p.lastCPU, cpu)
	p.peakRSS = max(p.peakRSS, rss)
	return p.lastCPU - p.startCPU, p.peakRSS
}

func (p *procStats) sample() (float64, int64) {
	if p.self {
		return readUsage(p.root, false)
	}
	return treeSample(p.root)
}

// treeSample returns the CPU seconds (own plus reaped children) of root and
// its live descendants, and their summed RSS in bytes.
func treeSample(root int) (cpu float64, rss int64) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, 0
	}
	parent := map[int]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp, ok := readPPID(pid); ok {
			parent[pid] = pp
		}
	}
	inTree := func(pid int) bool {
		for i := 0; i < 64 && pid > 1; i++ {
			if pid == root {
				return true
			}
			pid = parent[pid]
		}
		return pid == root
	}
	for pid := range parent {
		if !inTree(pid) {
			continue
		}
		c, r := readUsage(pid, pid == root)
		cpu += c
		rss += r
	}
	return cpu, rss
}

func readPPID(pid int) (int, bool) {
	f := statFields(pid)
	if len(f) < 4 {
		return 0, false
	}
	pp, err := strconv.Atoi(f[3])
	return pp, err == nil
}

// statFields splits /proc/PID/stat, whose second field (the command name)
// may contain spaces inside parentheses.
func statFields(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return append([]string{s[:strings.IndexByte(s, ' ')], s[strings.IndexByte(s, '(') : i+1]}, strings.Fields(s[i+1:])...)
}

func readUsage(pid int, withChildren bool) (cpu float64, rss int64) {
	f := statFields(pid)
	if len(f) < 24 {
		return 0, 0
	}
	ticks := 0.0
	fields := []int{13, 14} // utime, stime
	if withChildren {
		fields = append(fields, 15, 16) // cutime, cstime: children reaped by the root
	}
	for _, i := range fields {
		v, _ := strconv.ParseFloat(f[i], 64)
		ticks += v
	}
	pages, _ := strconv.ParseInt(f[23], 10, 64)
	return ticks / clockTicks, pages * int64(os.Getpagesize())
}
