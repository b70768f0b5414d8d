package render

import (
	"errors"
	"fmt"
	htemplate "html/template"
	"io"
	"sync"
	ttemplate "text/template"
	"text/template/parse"
)

// part is one parsed source. Its master template is instrumented but never
// executed: executions run on clones, each with its own meter bound into
// its function map, because template functions cannot otherwise reach
// per-execution state. Clones are pooled; an html/template clone escapes
// its copy of the trees on first use.
type part struct {
	field    string
	trees    []*parse.Tree // the master's, for Vars
	outLimit int
	work     int
	clone    func() (*instance, error)
	pool     sync.Pool // of *instance
}

type instance struct {
	exec func(io.Writer, any) error
	m    *meter
}

// errProbe stops the execution that newPart runs to make html/template
// escape the trees: escaping errors (a value in an ambiguous context, a
// template ending inside a tag) surface only at execution, and the first
// thing an instrumented template does is write.
var errProbe = errors.New("probe")

type probeWriter struct{}

func (probeWriter) Write([]byte) (int, error) { return 0, errProbe }

// newPart parses src as the part named field; nil for an empty src. A
// panic of the template packages on this tenant-written source is a
// ParseError like any other refusal.
func newPart(field, src string, lim Limits, outLimit int) (_ *part, err error) {
	if src == "" {
		return nil, nil
	}
	defer func() {
		if r := recover(); r != nil {
			err = &ParseError{Field: field, Err: fmt.Errorf("template compilation panicked: %v", r)}
		}
	}()
	if len(src) > lim.MaxTemplateBytes {
		return nil, &ParseError{Field: field, Err: fmt.Errorf("%w: %d bytes, limit %d", ErrTemplateTooLarge, len(src), lim.MaxTemplateBytes)}
	}
	p := &part{field: field, outLimit: outLimit, work: lim.MaxWork}
	trees := map[string]*parse.Tree{}
	if field == FieldHTML {
		master, err := htemplate.New(field).Option("missingkey=error").Parse(src)
		if err != nil {
			return nil, &ParseError{Field: field, Err: err}
		}
		for _, t := range master.Templates() {
			if t.Tree != nil {
				trees[t.Name()] = t.Tree
			}
		}
		p.clone = func() (*instance, error) {
			c, err := master.Clone()
			if err != nil {
				return nil, err
			}
			m := &meter{}
			c.Funcs(m.funcs())
			return &instance{exec: c.Execute, m: m}, nil
		}
	} else {
		master, err := ttemplate.New(field).Option("missingkey=error").Parse(src)
		if err != nil {
			return nil, &ParseError{Field: field, Err: err}
		}
		for _, t := range master.Templates() {
			if t.Tree != nil {
				trees[t.Name()] = t.Tree
			}
		}
		p.clone = func() (*instance, error) {
			c, err := master.Clone()
			if err != nil {
				return nil, err
			}
			m := &meter{}
			c.Funcs(m.funcs())
			return &instance{exec: c.Execute, m: m}, nil
		}
	}
	if err := checkCalls(trees); err != nil {
		return nil, &ParseError{Field: field, Err: err}
	}
	for _, tr := range trees {
		instrument(tr)
		p.trees = append(p.trees, tr)
	}
	inst, err := p.clone()
	if err != nil {
		return nil, &ParseError{Field: field, Err: err}
	}
	if err := inst.exec(probeWriter{}, nil); err != nil && !errors.Is(err, errProbe) {
		return nil, &ParseError{Field: field, Err: cleanError(err)}
	}
	p.pool.Put(inst)
	return p, nil
}

// render executes the part for vars on a pooled clone.
func (p *part) render(vars map[string]string) (string, error) {
	inst, _ := p.pool.Get().(*instance)
	if inst == nil {
		var err error
		if inst, err = p.clone(); err != nil {
			return "", err
		}
	}
	out, err := inst.run(vars, p.outLimit, p.work)
	if errors.Is(err, errPanicked) {
		return "", err // the clone's state is unknown: drop it
	}
	p.pool.Put(inst)
	return out, err
}

// errPanicked reports a panic during execution. text/template turns errors
// in functions and in evaluation into errors but re-raises runtime errors,
// which Execute must not let escape.
var errPanicked = errors.New("template execution panicked")

func (inst *instance) run(vars map[string]string, outLimit, work int) (out string, err error) {
	m := inst.m
	m.reset(outLimit, work)
	defer m.release()
	defer func() {
		if r := recover(); r != nil {
			out, err = "", fmt.Errorf("%w: %v", errPanicked, r)
		}
	}()
	if err := inst.exec(m, vars); err != nil {
		return "", err
	}
	return string(m.buf), nil
}
