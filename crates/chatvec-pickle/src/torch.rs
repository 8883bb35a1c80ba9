//! What torch's pickles mean: storages named by persistent ids, and the short allow-list of
//! callables given meaning (`collections.OrderedDict` and torch's tensor-rebuild functions).
//! Any other call yields an opaque value carrying the callable's name; nothing is ever run.

use std::rc::Rc;

use crate::error::PickleError;
use crate::unpickle::{Obj, PResult, Unpickler, Value};

/// Element types a torch checkpoint may hold that we can hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TorchDType {
    BF16,
    F16,
    F32,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl TorchDType {
    pub(crate) fn size(self) -> usize {
        match self {
            TorchDType::F64 | TorchDType::I64 => 8,
            TorchDType::F32 | TorchDType::I32 => 4,
            TorchDType::BF16 | TorchDType::F16 | TorchDType::I16 => 2,
            TorchDType::I8 | TorchDType::U8 | TorchDType::Bool => 1,
        }
    }

    /// The safetensors name (`BF16`, ..., `BOOL`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            TorchDType::BF16 => "BF16",
            TorchDType::F16 => "F16",
            TorchDType::F32 => "F32",
            TorchDType::F64 => "F64",
            TorchDType::I64 => "I64",
            TorchDType::I32 => "I32",
            TorchDType::I16 => "I16",
            TorchDType::I8 => "I8",
            TorchDType::U8 => "U8",
            TorchDType::Bool => "BOOL",
        }
    }

    /// From a legacy typed-storage class name (`BFloat16Storage`).
    fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "BFloat16Storage" => TorchDType::BF16,
            "HalfStorage" => TorchDType::F16,
            "FloatStorage" => TorchDType::F32,
            "DoubleStorage" => TorchDType::F64,
            "LongStorage" => TorchDType::I64,
            "IntStorage" => TorchDType::I32,
            "ShortStorage" => TorchDType::I16,
            "CharStorage" => TorchDType::I8,
            "ByteStorage" => TorchDType::U8,
            "BoolStorage" => TorchDType::Bool,
            _ => return None,
        })
    }

    /// From a dtype global (`torch.bfloat16`).
    fn from_dtype_global(global: &str) -> Option<Self> {
        Some(match global.strip_prefix("torch.")? {
            "bfloat16" => TorchDType::BF16,
            "float16" | "half" => TorchDType::F16,
            "float32" | "float" => TorchDType::F32,
            "float64" | "double" => TorchDType::F64,
            "int64" | "long" => TorchDType::I64,
            "int32" | "int" => TorchDType::I32,
            "int16" | "short" => TorchDType::I16,
            "int8" => TorchDType::I8,
            "uint8" => TorchDType::U8,
            "bool" => TorchDType::Bool,
            _ => return None,
        })
    }
}

/// What a storage's persistent id says about its elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StorageKind {
    /// A legacy typed storage (`torch.FloatStorage`...): the tensor's dtype.
    Typed(TorchDType),
    /// `torch.UntypedStorage`: bytes, the dtype comes with the tensor (`_rebuild_tensor_v3`).
    Untyped,
    /// A storage class we cannot read (complex, quantized...): its global name.
    Unsupported(Rc<str>),
}

/// A storage named by a persistent id: the zip entry `data/<key>`.
#[derive(Debug)]
pub(crate) struct Storage {
    pub(crate) kind: StorageKind,
    pub(crate) key: Rc<str>,
}

/// A tensor rebuilt (on paper) by one of torch's `_rebuild_tensor*` functions.
#[derive(Debug)]
pub(crate) struct Tensor {
    pub(crate) storage: Rc<Storage>,
    /// The element type, or the name of the unsupported one.
    pub(crate) dtype: std::result::Result<TorchDType, String>,
    /// Storage offset in elements.
    pub(crate) offset: usize,
    pub(crate) shape: Vec<usize>,
    pub(crate) stride: Vec<i64>,
}

/// A call's problem, as a [`PickleError::BadCall`].
fn bad_call(func: &str, problem: impl Into<String>) -> PickleError {
    PickleError::BadCall { func: func.to_string(), problem: problem.into() }
}

impl Unpickler<'_> {
    /// Resolves torch's persistent id `('storage', storage_type, key, location, numel)`.
    pub(crate) fn persistent_load(&self, pid: &Value) -> PResult<Value> {
        let bad = |what: String| PickleError::PersistentId(what);
        let items = self.tuple(pid).ok_or_else(|| bad("is not a tuple".into()))?;
        let [tag, storage_type, key, _location, _numel] = items else {
            return Err(bad(format!("has {} fields, expected 5", items.len())));
        };
        if !matches!(tag, Value::Str(s) if &**s == "storage") {
            return Err(bad("is not a ('storage', ...) tuple".into()));
        }
        let Value::Global(class) = storage_type else {
            return Err(bad("names a storage type that is not a class".into()));
        };
        let short = class.rsplit('.').next().unwrap_or(class);
        let kind = if matches!(short, "UntypedStorage" | "_UntypedStorage") {
            StorageKind::Untyped
        } else if let Some(d) = TorchDType::from_storage_class(short) {
            StorageKind::Typed(d)
        } else {
            StorageKind::Unsupported(class.clone())
        };
        let key: Rc<str> = match key {
            Value::Str(s) => s.clone(),
            Value::Int(i) => Rc::from(i.to_string()),
            _ => return Err(bad("has a storage key that is not a string".into())),
        };
        if key.is_empty() || key.contains('/') || key.contains("..") {
            return Err(bad(format!("has storage key {key:?}, not a plain name")));
        }
        Ok(Value::Storage(Rc::new(Storage { kind, key })))
    }

    /// NEWOBJ: `cls.__new__(cls, ...)`, an empty dict for `OrderedDict`, else opaque.
    pub(crate) fn new_object(&mut self, cls: &Value) -> PResult<Value> {
        match cls {
            Value::Global(g) if &**g == "collections.OrderedDict" => self.new_obj(Obj::Dict(Default::default())),
            Value::Global(g) => Ok(Value::Opaque(g.clone())),
            other => Err(PickleError::WrongOperand { op: "NEWOBJ", found: other.kind() }),
        }
    }

    /// Calls (on paper) `callable(*args)` for the allow-listed callables; anything else gives an
    /// opaque value carrying the callable's name.
    pub(crate) fn reduce(&mut self, callable: &Value, args: &Value) -> PResult<Value> {
        let Value::Global(name) = callable else {
            return Err(PickleError::WrongOperand { op: "REDUCE", found: callable.kind() });
        };
        let n = self.tuple(args).ok_or_else(|| bad_call(name, "arguments are not a tuple"))?.len();
        self.spend(1 + n)?;
        let args: Vec<Value> = self.tuple(args).unwrap_or_default().to_vec();
        let arity = |min: usize| {
            if args.len() < min {
                Err(bad_call(name, format!("{} arguments", args.len())))
            } else {
                Ok(())
            }
        };
        match &**name {
            "collections.OrderedDict" | "builtins.dict" => self.ordered_dict(name, args.first()),
            // (storage, storage_offset, size, stride[, requires_grad, backward_hooks[, metadata]])
            "torch._utils._rebuild_tensor" | "torch._utils._rebuild_tensor_v2" => {
                arity(4)?;
                self.rebuild_tensor(name, &args[..4], None)
            }
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype[, metadata])
            "torch._utils._rebuild_tensor_v3" => {
                arity(7)?;
                let Value::Global(dtype) = &args[6] else {
                    return Err(bad_call(name, "dtype argument is not a torch dtype"));
                };
                let dtype = TorchDType::from_dtype_global(dtype).ok_or_else(|| dtype.to_string());
                self.rebuild_tensor(name, &args[..4], Some(dtype))
            }
            // (data, requires_grad, backward_hooks[, state]): the parameter is its data.
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => match args.first() {
                Some(v @ (Value::Tensor(_) | Value::Opaque(_))) => Ok(v.clone()),
                _ => Err(bad_call(name, "data argument is not a tensor")),
            },
            // (func, new_type, args, state): a tensor (subclass) with Python state.
            "torch._tensor._rebuild_from_type_v2" => {
                arity(3)?;
                match &args[0] {
                    Value::Global(f) if f.starts_with("torch._utils._rebuild_tensor") => {
                        self.reduce(&args[0], &args[2])
                    }
                    Value::Global(f) => Ok(Value::Opaque(f.clone())),
                    _ => Err(bad_call(name, "rebuild function is not a global")),
                }
            }
            _ => Ok(Value::Opaque(name.clone())),
        }
    }

    /// `OrderedDict([(k, v), ...])` (or with no argument, an empty dict).
    fn ordered_dict(&mut self, name: &str, pairs: Option<&Value>) -> PResult<Value> {
        let dict = self.new_obj(Obj::Dict(Default::default()))?;
        let Some(pairs) = pairs else {
            return Ok(dict);
        };
        let n = self.seq(pairs).ok_or_else(|| bad_call(name, "unsupported arguments"))?.len();
        self.spend(n)?;
        let pairs = self.seq(pairs).unwrap_or_default().to_vec();
        let mut items = Vec::with_capacity(pairs.len() * 2);
        for p in &pairs {
            match self.tuple(p) {
                Some([k, v]) => items.extend([k.clone(), v.clone()]),
                _ => return Err(bad_call(name, "unsupported arguments")),
            }
        }
        self.push(dict.clone());
        let r = self.set_items(items);
        self.pop()?;
        r.map(|()| dict)
    }

    /// Builds a tensor from `(storage, storage_offset, size, stride)`; `dtype` is given for an
    /// untyped storage (`_rebuild_tensor_v3`).
    fn rebuild_tensor(
        &mut self,
        func: &str,
        args: &[Value],
        dtype: Option<std::result::Result<TorchDType, String>>,
    ) -> PResult<Value> {
        let dims = |v: &Value| self.tuple(v).map_or(0, <[Value]>::len);
        let cost = 1 + dims(&args[2]) + dims(&args[3]);
        self.spend(cost)?;
        let Value::Storage(storage) = &args[0] else {
            return Err(bad_call(func, "first argument is not a storage"));
        };
        let offset = match args[1] {
            Value::Int(i) => usize::try_from(i).map_err(|_| bad_call(func, "negative storage offset"))?,
            _ => return Err(bad_call(func, "storage offset is not an integer")),
        };
        let shape = self
            .ints(func, &args[2], "size")?
            .into_iter()
            .map(|d| usize::try_from(d).map_err(|_| bad_call(func, "negative size")))
            .collect::<PResult<Vec<usize>>>()?;
        let stride = self.ints(func, &args[3], "stride")?;
        let dtype = match (&storage.kind, dtype) {
            (StorageKind::Unsupported(class), _) => Err(format!("(storage class {class})")),
            (StorageKind::Typed(d), None) => Ok(*d),
            (StorageKind::Typed(d), Some(Ok(t))) if *d == t => Ok(*d),
            (StorageKind::Typed(_), Some(_)) => return Err(bad_call(func, "dtype disagrees with the storage's type")),
            (StorageKind::Untyped, Some(d)) => d,
            (StorageKind::Untyped, None) => return Err(bad_call(func, "untyped storage without a dtype")),
        };
        Ok(Value::Tensor(Rc::new(Tensor { storage: storage.clone(), dtype, offset, shape, stride })))
    }

    /// A tuple of ints (a size or stride argument).
    fn ints(&self, func: &str, v: &Value, what: &str) -> PResult<Vec<i64>> {
        let items = self.tuple(v).ok_or_else(|| bad_call(func, format!("{what} is not a tuple")))?;
        items
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                _ => Err(bad_call(func, format!("{what} holds a non-integer"))),
            })
            .collect()
    }
}
