//! The pickle stack machine: the opcodes that plain data (and torch checkpoints) use, in named
//! groups. Every `GLOBAL` is recorded as a name and never resolved; what calls mean is decided
//! in [`crate::torch`].

use std::collections::HashMap;
use std::rc::Rc;

use crate::error::PickleError;
use crate::opcode as op;
use crate::torch::{Storage, Tensor};

pub(crate) type PResult<T> = std::result::Result<T, PickleError>;

/// A pickle value. Containers live in the unpickler's arena and are referred to by index, as
/// Python refers to objects, so memo sharing and mutation after memoization behave as in Python.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    None,
    /// A bool (its value is never needed).
    Bool,
    Int(i64),
    /// An integer too large for i64 (kept only as a marker).
    BigInt,
    /// A float (its value is never needed).
    Float,
    Str(Rc<str>),
    /// A bytes object (its contents are never needed).
    Bytes,
    /// A `module.name` reference, recorded and never resolved.
    Global(Rc<str>),
    /// A tuple, list or dict in the arena.
    Obj(usize),
    Storage(Rc<Storage>),
    Tensor(Rc<Tensor>),
    /// The result of calling a callable we do not interpret: the callable's name.
    Opaque(Rc<str>),
}

impl Value {
    /// The value's kind, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) | Value::BigInt => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Bytes => "bytes",
            Value::Global(_) => "a global",
            Value::Obj(_) => "a container",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
            Value::Opaque(_) => "an opaque object",
        }
    }
}

/// A dict keeping insertion order, with an index on its string keys.
#[derive(Debug, Default)]
pub(crate) struct Dict {
    pub(crate) items: Vec<(Value, Value)>,
    by_str: HashMap<Rc<str>, usize>,
}

impl Dict {
    /// Sets `key` to `value`; returns whether the key is new (the dict grew).
    fn insert(&mut self, key: Value, value: Value) -> bool {
        if let Value::Str(s) = &key {
            if let Some(&i) = self.by_str.get(s) {
                self.items[i].1 = value;
                return false;
            }
            self.by_str.insert(s.clone(), self.items.len());
        }
        self.items.push((key, value));
        true
    }
}

/// A container in the arena.
#[derive(Debug)]
pub(crate) enum Obj {
    Tuple(Vec<Value>),
    /// Lists and sets.
    List(Vec<Value>),
    Dict(Dict),
}

/// Value slots a dict item costs (key, value, and its index entry).
const DICT_ITEM_SLOTS: usize = 4;

/// A stack machine for the pickle opcodes that plain data (and torch checkpoints) use.
pub(crate) struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stacks saved by MARK.
    marks: Vec<Vec<Value>>,
    memo: HashMap<u64, Value>,
    pub(crate) arena: Vec<Obj>,
    /// Work left (items copied, key bytes hashed): a hostile pickle that reuses one big memoized
    /// object over and over could otherwise cost time quadratic in its size.
    budget: usize,
    /// Value slots the containers may still hold: the same reuse, copying a big memoized list
    /// into new containers, could otherwise fill memory long before the work runs out.
    slots: usize,
}

impl<'a> Unpickler<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Unpickler {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            arena: Vec::new(),
            budget: data.len().saturating_mul(16).saturating_add(1 << 20),
            // A pickle stores at most about one value per byte unless it copies containers;
            // twice that (about 50 bytes a slot) keeps a 5 MB pickle within a few hundred MB.
            slots: data.len().saturating_mul(2).saturating_add(1 << 20),
        }
    }

    /// Runs the pickle to its STOP and returns the object it built.
    pub(crate) fn load(&mut self) -> PResult<Value> {
        loop {
            let at = self.pos;
            let code = self.u8().map_err(|_| PickleError::NoStop)?;
            if code == op::STOP {
                return self.pop();
            }
            let handled = self.framing_op(code)?
                || self.scalar_op(code)?
                || self.text_op(code)?
                || self.container_op(code)?
                || self.memo_op(code)?
                || self.object_op(code)?;
            if !handled {
                return Err(PickleError::Opcode { op: code, at });
            }
        }
    }

    /// PROTO, FRAME and the stack opcodes (MARK, POP, POP_MARK, DUP).
    fn framing_op(&mut self, code: u8) -> PResult<bool> {
        match code {
            op::PROTO => {
                let v = self.u8()?;
                if v > 5 {
                    return Err(PickleError::Protocol(v));
                }
            }
            // A length hint only.
            op::FRAME => {
                self.take(8)?;
            }
            op::MARK => {
                let saved = std::mem::take(&mut self.stack);
                self.marks.push(saved);
            }
            op::POP if self.stack.is_empty() => {
                self.pop_mark()?;
            }
            op::POP => {
                self.pop()?;
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            op::DUP => {
                let v = self.top()?.clone();
                self.push(v);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// None, bools, ints and floats.
    fn scalar_op(&mut self, code: u8) -> PResult<bool> {
        let v = match code {
            op::NONE => Value::None,
            op::NEWTRUE | op::NEWFALSE => Value::Bool,
            op::BININT => Value::Int(i32::from_le_bytes(self.take_array()?).into()),
            op::BININT1 => Value::Int(self.u8()?.into()),
            op::BININT2 => Value::Int(u16::from_le_bytes(self.take_array()?).into()),
            op::LONG1 => {
                let n = self.u8()? as usize;
                long_value(self.take(n)?)
            }
            op::LONG4 => {
                let n = self.len_u32()?;
                long_value(self.take(n)?)
            }
            // Big-endian f64, never needed.
            op::BINFLOAT => {
                self.take(8)?;
                Value::Float
            }
            _ => return Ok(false),
        };
        self.push(v);
        Ok(true)
    }

    /// Unicode strings, protocol-1 byte strings (read as text) and bytes objects.
    fn text_op(&mut self, code: u8) -> PResult<bool> {
        let v = match code {
            op::SHORT_BINUNICODE => {
                let n = self.u8()? as usize;
                self.string(n)?
            }
            op::BINUNICODE => {
                let n = self.len_u32()?;
                self.string(n)?
            }
            op::BINUNICODE8 => {
                let n = self.len_u64()?;
                self.string(n)?
            }
            op::SHORT_BINSTRING | op::BINSTRING => {
                let n = if code == op::SHORT_BINSTRING { self.u8()? as usize } else { self.len_u32()? };
                Value::Str(Rc::from(String::from_utf8_lossy(self.take(n)?).as_ref()))
            }
            op::SHORT_BINBYTES | op::BINBYTES | op::BINBYTES8 | op::BYTEARRAY8 => {
                let n = match code {
                    op::SHORT_BINBYTES => self.u8()? as usize,
                    op::BINBYTES => self.len_u32()?,
                    _ => self.len_u64()?,
                };
                self.take(n)?;
                Value::Bytes
            }
            _ => return Ok(false),
        };
        self.push(v);
        Ok(true)
    }

    /// Building tuples, lists, sets and dicts, and adding items to them.
    fn container_op(&mut self, code: u8) -> PResult<bool> {
        match code {
            op::EMPTY_DICT => self.push_obj(Obj::Dict(Dict::default()))?,
            op::EMPTY_LIST | op::EMPTY_SET => self.push_obj(Obj::List(Vec::new()))?,
            op::EMPTY_TUPLE => self.push_obj(Obj::Tuple(Vec::new()))?,
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.push_obj(Obj::Tuple(items))?;
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = (code - op::TUPLE1 + 1) as usize;
                if self.stack.len() < n {
                    return Err(PickleError::StackUnderflow(self.pos - 1));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push_obj(Obj::Tuple(items))?;
            }
            // A frozenset is kept as a list.
            op::LIST | op::FROZENSET => {
                let items = self.pop_mark()?;
                self.push_obj(Obj::List(items))?;
            }
            op::DICT => {
                let items = self.pop_mark()?;
                self.push_obj(Obj::Dict(Dict::default()))?;
                self.set_items(items)?;
            }
            op::APPEND => {
                let v = self.pop()?;
                self.append(vec![v])?;
            }
            op::APPENDS | op::ADDITEMS => {
                let items = self.pop_mark()?;
                self.append(items)?;
            }
            op::SETITEM => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![k, v])?;
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                self.set_items(items)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Writing the top of the stack to the memo, and reading it back.
    fn memo_op(&mut self, code: u8) -> PResult<bool> {
        match code {
            op::BINPUT | op::LONG_BINPUT | op::MEMOIZE => {
                let i = match code {
                    op::BINPUT => self.u8()?.into(),
                    op::LONG_BINPUT => self.u32_le()?.into(),
                    _ => self.memo.len() as u64,
                };
                let v = self.top()?.clone();
                self.memo.insert(i, v);
            }
            op::BINGET | op::LONG_BINGET => {
                let i: u64 = if code == op::BINGET { self.u8()?.into() } else { self.u32_le()?.into() };
                let v = self.memo.get(&i).cloned().ok_or(PickleError::MemoMissing(i))?;
                self.push(v);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Globals, persistent ids and calls: recorded, and interpreted only for the allow-list in
    /// [`crate::torch`].
    fn object_op(&mut self, code: u8) -> PResult<bool> {
        let v = match code {
            op::GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                Value::Global(Rc::from(format!("{module}.{name}")))
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(m), Value::Str(n)) = (&module, &name) else {
                    return Err(PickleError::WrongOperand {
                        op: "STACK_GLOBAL",
                        found: "operands that are not strings",
                    });
                };
                self.spend(1 + (m.len() + n.len()) / 16)?;
                Value::Global(Rc::from(format!("{m}.{n}")))
            }
            op::BINPERSID => {
                let pid = self.pop()?;
                self.persistent_load(&pid)?
            }
            op::REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                self.reduce(&callable, &args)?
            }
            // cls.__new__(cls, *args)
            op::NEWOBJ | op::NEWOBJ_EX => {
                if code == op::NEWOBJ_EX {
                    self.pop()?; // kwargs
                }
                self.pop()?; // args
                let cls = self.pop()?;
                self.new_object(&cls)?
            }
            // Sets an object's state (e.g. an OrderedDict's `_metadata`); ignored.
            op::BUILD => {
                self.pop()?;
                self.top()?;
                return Ok(true);
            }
            _ => return Ok(false),
        };
        self.push(v);
        Ok(true)
    }

    /// Charges `n` value slots against the memory budget.
    fn store(&mut self, n: usize) -> PResult<()> {
        self.slots = self.slots.checked_sub(n).ok_or(PickleError::TooMuchMemory(self.pos))?;
        Ok(())
    }

    /// Charges `n` units of work against the budget.
    pub(crate) fn spend(&mut self, n: usize) -> PResult<()> {
        self.budget = self.budget.checked_sub(n).ok_or(PickleError::TooMuchWork(self.pos))?;
        Ok(())
    }

    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let end =
            self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or(PickleError::Truncated(self.data.len()))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> PResult<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take_array::<1>()?[0])
    }

    fn u32_le(&mut self) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    /// A 4-byte length, checked against the bytes that remain.
    fn len_u32(&mut self) -> PResult<usize> {
        let n = self.u32_le()?;
        self.checked_len(n.into())
    }

    /// An 8-byte length, checked against the bytes that remain.
    fn len_u64(&mut self) -> PResult<usize> {
        let n = u64::from_le_bytes(self.take_array()?);
        self.checked_len(n)
    }

    fn checked_len(&self, n: u64) -> PResult<usize> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.data.len() - self.pos)
            .ok_or(PickleError::LengthPastEnd { len: n, at: self.pos })
    }

    /// A text line (GLOBAL's operands), without its newline.
    fn line(&mut self) -> PResult<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or(PickleError::Truncated(self.data.len()))?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| PickleError::NotUtf8("GLOBAL name"))
    }

    fn string(&mut self, n: usize) -> PResult<Value> {
        let s = std::str::from_utf8(self.take(n)?).map_err(|_| PickleError::NotUtf8("string"))?;
        Ok(Value::Str(Rc::from(s)))
    }

    pub(crate) fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    pub(crate) fn pop(&mut self) -> PResult<Value> {
        self.stack.pop().ok_or(PickleError::StackUnderflow(self.pos))
    }

    fn top(&self) -> PResult<&Value> {
        self.stack.last().ok_or(PickleError::StackUnderflow(self.pos))
    }

    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let saved = self.marks.pop().ok_or(PickleError::MarkMissing(self.pos))?;
        Ok(std::mem::replace(&mut self.stack, saved))
    }

    /// Adds `o` to the arena (charging its slots) and returns a reference to it.
    pub(crate) fn new_obj(&mut self, o: Obj) -> PResult<Value> {
        self.store(
            1 + match &o {
                Obj::Tuple(items) | Obj::List(items) => items.len(),
                Obj::Dict(d) => d.items.len() * DICT_ITEM_SLOTS,
            },
        )?;
        self.arena.push(o);
        Ok(Value::Obj(self.arena.len() - 1))
    }

    fn push_obj(&mut self, o: Obj) -> PResult<()> {
        let v = self.new_obj(o)?;
        self.push(v);
        Ok(())
    }

    /// The container on top of the stack, for APPEND / SETITEM; `None` for an opaque object
    /// (whose mutations we ignore).
    fn top_container(&self, op: &'static str) -> PResult<Option<usize>> {
        match self.top()? {
            Value::Obj(id) => Ok(Some(*id)),
            Value::Opaque(_) => Ok(None),
            other => Err(PickleError::WrongOperand { op, found: other.kind() }),
        }
    }

    fn append(&mut self, items: Vec<Value>) -> PResult<()> {
        let Some(id) = self.top_container("APPEND")? else {
            return Ok(());
        };
        self.store(items.len())?;
        match &mut self.arena[id] {
            Obj::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => Err(PickleError::WrongOperand { op: "APPEND", found: "something that is not a list" }),
        }
    }

    /// SETITEMS on the dict on top of the stack: `items` are key, value, key, value...
    pub(crate) fn set_items(&mut self, items: Vec<Value>) -> PResult<()> {
        if items.len() % 2 == 1 {
            return Err(PickleError::WrongOperand { op: "SETITEMS", found: "an odd number of items" });
        }
        let cost = items
            .chunks(2)
            .map(|kv| match &kv[0] {
                Value::Str(k) => 1 + k.len() / 16,
                _ => 1,
            })
            .sum();
        self.spend(cost)?;
        let Some(id) = self.top_container("SETITEM")? else {
            return Ok(());
        };
        let Obj::Dict(d) = &mut self.arena[id] else {
            return Err(PickleError::WrongOperand { op: "SETITEM", found: "something that is not a dict" });
        };
        let mut it = items.into_iter();
        let mut added = 0;
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            added += usize::from(d.insert(k, v));
        }
        self.store(added * DICT_ITEM_SLOTS)
    }

    /// The items of a list or tuple value.
    pub(crate) fn seq<'s>(&'s self, v: &Value) -> Option<&'s [Value]> {
        match v {
            Value::Obj(id) => match &self.arena[*id] {
                Obj::Tuple(t) | Obj::List(t) => Some(t),
                Obj::Dict(_) => None,
            },
            _ => None,
        }
    }

    /// The items of a tuple value.
    pub(crate) fn tuple<'s>(&'s self, v: &Value) -> Option<&'s [Value]> {
        match v {
            Value::Obj(id) => match &self.arena[*id] {
                Obj::Tuple(t) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The value of a LONG1 / LONG4 payload (little-endian two's complement).
pub(crate) fn long_value(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() > 8 {
        return Value::BigInt;
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut buf = if negative { [0xffu8; 8] } else { [0u8; 8] };
    buf[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i64::from_le_bytes(buf))
}
