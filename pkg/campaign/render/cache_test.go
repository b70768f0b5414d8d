package render_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/postflow/postflow/pkg/campaign/render"
)

func source(text string) func() (render.Source, render.Limits, error) {
	return func() (render.Source, render.Limits, error) {
		return render.Source{Text: text}, render.Limits{}, nil
	}
}

func TestCacheLoadsOnceUnderConcurrency(t *testing.T) {
	c := render.NewCache(4)
	var loads atomic.Int32
	release := make(chan struct{})
	load := func() (render.Source, render.Limits, error) {
		loads.Add(1)
		<-release // hold the flight open while the others arrive
		return render.Source{Text: "{{.x}}"}, render.Limits{}, nil
	}
	const n = 50
	var ready, done sync.WaitGroup
	results := make([]*render.Template, n)
	errs := make([]error, n)
	for i := range n {
		ready.Add(1)
		done.Go(func() {
			ready.Done()
			results[i], errs[i] = c.Get("campaign-1", load)
		})
	}
	ready.Wait()
	close(release)
	done.Wait()
	if got := loads.Load(); got != 1 {
		t.Fatalf("load called %d times, want 1", got)
	}
	for i := range n {
		if errs[i] != nil || results[i] != results[0] || results[0] == nil {
			t.Fatalf("Get %d = %p, %v; Get 0 = %p", i, results[i], errs[i], results[0])
		}
	}
	if tm, err := c.Get("campaign-1", load); err != nil || tm != results[0] || loads.Load() != 1 {
		t.Fatalf("Get after the flight = %p, %v after %d loads", tm, err, loads.Load())
	}
}

func TestCacheEvictsLeastRecentlyUsed(t *testing.T) {
	c := render.NewCache(2)
	loads := map[string]int{}
	get := func(key string) {
		t.Helper()
		if _, err := c.Get(key, func() (render.Source, render.Limits, error) {
			loads[key]++
			return source(key)()
		}); err != nil {
			t.Fatal(err)
		}
	}
	get("a")
	get("b")
	get("a") // a is now the most recently used
	get("c") // evicts b
	get("a")
	get("c")
	if loads["a"] != 1 || loads["b"] != 1 || loads["c"] != 1 {
		t.Fatalf("loads %v before b's return", loads)
	}
	get("b") // evicts a
	get("a")
	if loads["a"] != 2 || loads["b"] != 2 || loads["c"] != 1 {
		t.Fatalf("loads %v, want a:2 b:2 c:1", loads)
	}
}

func TestCacheDoesNotKeepErrors(t *testing.T) {
	c := render.NewCache(0)
	errDB := errors.New("db down")
	calls := 0
	flaky := func() (render.Source, render.Limits, error) {
		calls++
		if calls == 1 {
			return render.Source{}, render.Limits{}, errDB
		}
		return render.Source{Text: "ok"}, render.Limits{}, nil
	}
	if _, err := c.Get("k", flaky); !errors.Is(err, errDB) {
		t.Fatalf("first Get = %v, want the load error", err)
	}
	for range 2 {
		if tm, err := c.Get("k", flaky); err != nil || tm == nil {
			t.Fatalf("Get after a load error = %v, %v", tm, err)
		}
	}
	if calls != 2 {
		t.Fatalf("load called %d times, want 2 (once failing, once cached)", calls)
	}

	bad := 0
	for range 2 {
		_, err := c.Get("bad", func() (render.Source, render.Limits, error) {
			bad++
			return render.Source{Text: "{{"}, render.Limits{}, nil
		})
		var pe *render.ParseError
		if !errors.As(err, &pe) || pe.Field != render.FieldText {
			t.Fatalf("Get of an invalid source = %v, want a ParseError", err)
		}
	}
	if bad != 2 {
		t.Fatalf("invalid source loaded %d times, want 2: parse errors are not cached", bad)
	}
}
