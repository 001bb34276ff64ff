"""Small rows in each source's exact hub schema, for prepare tests that need known counts."""

import json

RIDDLES = ["Придумай загадку про зиму", "Сочини четверостишие о море", "Как сварить гречку?", "Почему небо синее?",
           "Назови три столицы Европы", "Посоветуй книгу на выходные", "Сколько будет семь на восемь?",
           "Переведи слово «дом» на английский", "Как ухаживать за кактусом?", "Что такое инфляция?",
           "Объясни правило буравчика", "Напиши тост на день рождения"]
TOPICS = ["Москве", "Волге", "Байкале", "Пушкине", "фотосинтезе", "чёрных дырах", "борще", "шахматах", "Эрмитаже",
          "вулканах", "пингвинах", "Менделееве", "квантовой физике", "балете", "Сибири", "метро", "пчёлах",
          "самоварах", "космонавтике", "грибах"]


def gm_row(i, *, lang="ru", system=False, question=None):
    conv = [{"role": "system", "content": "You are a helpful assistant."}] if system else []
    q = question or f"Расскажи подробно о {TOPICS[i % len(TOPICS)]}"
    conv += [{"role": "user", "content": q}, {"role": "assistant", "content": f"Ответ {i}: город основан давно."}]
    return {"source": "x", "conversation": conv, "prompt_tokens": 10, "answer_tokens": 8, "cluster": i,
            "prompt_lang": lang, "answer_lang": lang}


def saiga_row(i, *, score=9, bad=False, language="Russian", messages=None):
    msgs = messages or [{"role": "user", "content": RIDDLES[i % len(RIDDLES)]},
                        {"role": "bot", "content": f"Загадка {i}: висит груша, нельзя скушать."}]
    return {"messages": msgs, "source": "gpt4", "opus_score": score, "language": language, "turns": 1,
            "sonnet_topic": "writing", "sonnet_topic_explanation": "", "sonnet_complexity": "easy",
            "sonnet_complexity_explanation": "", "is_bad_by_regex": bad, "score_explanation": ""}


def rag_row(i, *, type_="good", docs=None):
    docs_json = docs if docs is not None else json.dumps(
        [{"doc_id": 0, "title": "Волга", "content": "Волга — река в России."},
         {"doc_id": 1, "title": None, "content": "Ока впадает в Волгу."}], ensure_ascii=False)
    conv = [{"role": "system", "content": "Answer using only the documents."},
            {"role": "documents", "content": docs_json},
            {"role": "user", "content": ["Куда впадает Ока?", "Где течёт Волга?", "Какая река длиннее?",
                                          "Что известно о притоках?", "Как называются берега?"][i % 5]},
            {"role": "assistant", "content": '{"relevant_doc_ids": [0, 1]}'},
            {"role": "assistant", "content": "Ока впадает в Волгу, а Волга течёт в России."}]
    return {"cluster": 1, "conversation": conv, "docs_count": 2.0, "model": "gpt-4", "type": type_, "id": str(i)}


def pref_row(i, *, approved=True, bad=False, chosen=None, rejected=None, prompt=None):
    return {"prompt": prompt or [{"role": "user", "content": f"Объясни коротко, что такое {TOPICS[i % len(TOPICS)]}"}],
            "chosen": [{"role": "assistant", "content": chosen or f"Спасибо, у меня всё хорошо, номер {i}!"}],
            "rejected": [{"role": "assistant", "content": rejected or f"Нормально {i}."}],
            "chosen_model": "a", "rejected_model": "b", "source": "s", "sonnet_approved": approved,
            "is_bad_by_regex": bad}


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path
