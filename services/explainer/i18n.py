"""Fixed report texts in English, Korean and Japanese.

The VLM writes the free text in the configured language; headings, position words, severities,
grade meanings, template actions and the fallback notice come from here so they are always
correct and identical across reports.
"""

from __future__ import annotations

from services.explainer.geometry import LOCATION_CODES

LANGUAGES = ("en", "ko", "ja")
LANGUAGE_NAMES = {"en": "English", "ko": "Korean", "ja": "Japanese"}

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Inspection report",
        "summary": "Summary",
        "findings": "Findings",
        "evidence": "Evidence",
        "root_cause": "Root cause",
        "actions": "Recommended actions",
        "grade": "Quality grade",
        "images": "Images",
        "frame": "Frame",
        "overlay": "Anomaly heatmap",
        "crop_region": "Close-up of region {index}, at the {position}",
        "crop_peak": "Close-up of the heatmap's peak, at the {position}",
        "unclassified": "unclassified",
        "line": "Line",
        "station": "Station",
        "camera": "Camera",
        "product": "Product class",
        "decision": "Decision",
        "score": "Score (0.5 = threshold)",
        "confidence": "Confidence",
        "source": "Written by",
        "source_vlm": "vision-language model {model}",
        "source_fallback": "local signals only",
        "fallback_notice": "NOT WRITTEN BY A VLM: this report was generated from the anomaly model's "
        "local signals only (reason: {reason}).",
        "location_mismatch": "The model's stated location ({stated}) does not match the heatmap "
        "(anomaly at {observed}). Check the images before acting.",
        "no_findings": "No defect confirmed.",
        "region": "Region {index}: {position}, {share} of the image, score {score}",
        "type": "Type",
        "location": "Location",
        "severity": "Severity",
        "cause": "Possible cause",
        "candidate_types": "Candidate types from the class vocabulary: {types}",
        "fallback_summary": "The anomaly model flagged this {product} part ({decision}, score {score}) "
        "with {count} anomalous region(s); the largest is at the {position}.",
        "fallback_finding": "Anomalous region at the {position}, {share} of the image; shape suggests "
        "{shape}.",
        "shape_elongated": "an elongated defect",
        "shape_compact": "a compact defect",
        "shape_large": "a large-area defect",
        "no_region": "The anomaly model reported no region above threshold.",
        "undetermined": "not determined",
        "vlm_disagrees": "THE VLM DISAGREES with the anomaly model's decision ({decision}): it reports no "
        "defect. The decision stands; have an inspector check the part.",
        "vlm_words": "The VLM's words (quoted, not checked)",
        "vlm_assessment": "Assessment",
        "vlm_observations": "Observations",
        "vlm_root_cause": "Root cause",
        "vlm_suggestions": "Suggested actions",
        "vlm_findings": "Findings as the VLM describes them",
    },
    "ko": {
        "title": "검사 보고서",
        "summary": "요약",
        "findings": "발견 사항",
        "evidence": "근거",
        "root_cause": "근본 원인",
        "actions": "권장 조치",
        "grade": "품질 등급",
        "images": "이미지",
        "frame": "원본 프레임",
        "overlay": "이상 히트맵",
        "crop_region": "영역 {index} 확대, {position}",
        "crop_peak": "히트맵 최고점 확대, {position}",
        "unclassified": "미분류",
        "line": "라인",
        "station": "스테이션",
        "camera": "카메라",
        "product": "제품 분류",
        "decision": "판정",
        "score": "점수 (0.5 = 임계값)",
        "confidence": "신뢰도",
        "source": "작성",
        "source_vlm": "비전-언어 모델 {model}",
        "source_fallback": "로컬 신호만 사용",
        "fallback_notice": "VLM이 작성하지 않음: 이 보고서는 이상 탐지 모델의 로컬 신호만으로 "
        "생성되었습니다 (사유: {reason}).",
        "location_mismatch": "모델이 제시한 위치({stated})가 히트맵({observed})과 일치하지 않습니다. "
        "조치 전에 이미지를 확인하십시오.",
        "no_findings": "확인된 결함이 없습니다.",
        "region": "영역 {index}: {position}, 이미지의 {share}, 점수 {score}",
        "type": "유형",
        "location": "위치",
        "severity": "심각도",
        "cause": "가능한 원인",
        "candidate_types": "제품 분류의 결함 용어 후보: {types}",
        "fallback_summary": "이상 탐지 모델이 이 {product} 부품을 표시했습니다 ({decision}, 점수 {score}). "
        "이상 영역 {count}개, 가장 큰 영역은 {position}에 있습니다.",
        "fallback_finding": "{position}의 이상 영역, 이미지의 {share}; 형태로 보아 {shape}.",
        "shape_elongated": "길쭉한 결함",
        "shape_compact": "작고 뭉친 결함",
        "shape_large": "넓은 면적의 결함",
        "no_region": "이상 탐지 모델이 임계값을 넘는 영역을 보고하지 않았습니다.",
        "undetermined": "판단 불가",
        "vlm_disagrees": "VLM이 이상 탐지 모델의 판정({decision})에 동의하지 않음: "
        "결함이 없다고 보고했습니다. 판정은 유지되며, 검사자가 부품을 확인하십시오.",
        "vlm_words": "VLM의 원문 (인용, 검증되지 않음)",
        "vlm_assessment": "평가",
        "vlm_observations": "관찰",
        "vlm_root_cause": "근본 원인",
        "vlm_suggestions": "제안된 조치",
        "vlm_findings": "VLM이 설명한 발견 사항",
    },
    "ja": {
        "title": "検査レポート",
        "summary": "概要",
        "findings": "所見",
        "evidence": "根拠",
        "root_cause": "根本原因",
        "actions": "推奨対応",
        "grade": "品質グレード",
        "images": "画像",
        "frame": "元画像",
        "overlay": "異常ヒートマップ",
        "crop_region": "領域 {index} の拡大、{position}",
        "crop_peak": "ヒートマップの最大点の拡大、{position}",
        "unclassified": "未分類",
        "line": "ライン",
        "station": "ステーション",
        "camera": "カメラ",
        "product": "製品クラス",
        "decision": "判定",
        "score": "スコア (0.5 = しきい値)",
        "confidence": "確信度",
        "source": "作成",
        "source_vlm": "視覚言語モデル {model}",
        "source_fallback": "ローカル信号のみ",
        "fallback_notice": "VLMによる作成ではありません: このレポートは異常検知モデルのローカル信号のみから"
        "生成されました (理由: {reason})。",
        "location_mismatch": "モデルが示した位置 ({stated}) はヒートマップ ({observed}) と一致しません。"
        "対応前に画像を確認してください。",
        "no_findings": "確認された欠陥はありません。",
        "region": "領域 {index}: {position}、画像の {share}、スコア {score}",
        "type": "種類",
        "location": "位置",
        "severity": "重大度",
        "cause": "考えられる原因",
        "candidate_types": "製品クラスの欠陥用語の候補: {types}",
        "fallback_summary": "異常検知モデルがこの {product} 部品を検出しました ({decision}、スコア {score})。"
        "異常領域は {count} 件、最大の領域は {position} にあります。",
        "fallback_finding": "{position} の異常領域、画像の {share}。形状から {shape} と推定されます。",
        "shape_elongated": "細長い欠陥",
        "shape_compact": "小さくまとまった欠陥",
        "shape_large": "広範囲の欠陥",
        "no_region": "異常検知モデルはしきい値を超える領域を報告していません。",
        "undetermined": "判定不能",
        "vlm_disagrees": "VLMは異常検知モデルの判定({decision})に同意していません: 欠陥なしと報告しています。"
        "判定は維持されます。検査員が部品を確認してください。",
        "vlm_words": "VLMの原文 (引用、未検証)",
        "vlm_assessment": "評価",
        "vlm_observations": "観察",
        "vlm_root_cause": "根本原因",
        "vlm_suggestions": "提案された対応",
        "vlm_findings": "VLMによる発見事項の説明",
    },
}

POSITIONS: dict[str, dict[str, str]] = {
    "en": {code: code for code in LOCATION_CODES},
    "ko": {
        "upper left": "왼쪽 위",
        "upper middle": "위쪽 가운데",
        "upper right": "오른쪽 위",
        "middle left": "왼쪽 가운데",
        "center": "중앙",
        "middle right": "오른쪽 가운데",
        "lower left": "왼쪽 아래",
        "lower middle": "아래쪽 가운데",
        "lower right": "오른쪽 아래",
        "whole part": "부품 전체",
    },
    "ja": {
        "upper left": "左上",
        "upper middle": "上中央",
        "upper right": "右上",
        "middle left": "左中央",
        "center": "中央",
        "middle right": "右中央",
        "lower left": "左下",
        "lower middle": "下中央",
        "lower right": "右下",
        "whole part": "部品全体",
    },
}

SEVERITY_WORDS: dict[str, dict[str, str]] = {
    "en": {"minor": "minor", "moderate": "moderate", "severe": "severe"},
    "ko": {"minor": "경미", "moderate": "보통", "severe": "심각"},
    "ja": {"minor": "軽微", "moderate": "中程度", "severe": "重大"},
}

GRADE_MEANINGS: dict[str, dict[str, str]] = {
    "en": {
        "A": "no defect confirmed",
        "B": "flagged for review, not confirmed by the score",
        "C": "minor defect",
        "D": "moderate defect",
        "E": "severe defect",
        "F": "severe, extensive defect",
    },
    "ko": {
        "A": "결함 없음",
        "B": "검토 대상으로 표시됨, 점수로 확인되지 않음",
        "C": "경미한 결함",
        "D": "보통 결함",
        "E": "심각한 결함",
        "F": "심각하고 광범위한 결함",
    },
    "ja": {
        "A": "欠陥なし",
        "B": "確認対象として検出、スコアでは未確定",
        "C": "軽微な欠陥",
        "D": "中程度の欠陥",
        "E": "重大な欠陥",
        "F": "重大かつ広範囲の欠陥",
    },
}

# Template actions by grade: the report's actions (the VLM's suggestions are quoted, never used).
GRADE_ACTIONS: dict[str, dict[str, list[str]]] = {
    "en": {
        "A": ["Release the part; log the event as a likely false alarm for model review."],
        "B": [
            "Have an inspector confirm the part by eye.",
            "Add the frame to the model's review set if it is good.",
        ],
        "C": ["Have an inspector confirm; release or rework per the quality plan."],
        "D": ["Hold the part for rework or scrap.", "Check the station for a recurring cause."],
        "E": ["Scrap or quarantine the part.", "Inspect the upstream process step now."],
        "F": ["Quarantine the part and the recent lot.", "Stop and inspect the upstream process step."],
    },
    "ko": {
        "A": ["부품을 출하하고, 모델 검토를 위해 오경보 가능성으로 기록하십시오."],
        "B": ["검사자가 육안으로 부품을 확인하십시오.", "양품이면 프레임을 모델 검토 세트에 추가하십시오."],
        "C": ["검사자가 확인한 후 품질 계획에 따라 출하 또는 재작업하십시오."],
        "D": ["재작업 또는 폐기를 위해 부품을 보류하십시오.", "스테이션에서 반복 원인을 점검하십시오."],
        "E": ["부품을 폐기하거나 격리하십시오.", "상류 공정을 즉시 점검하십시오."],
        "F": ["부품과 최근 로트를 격리하십시오.", "상류 공정을 중지하고 점검하십시오."],
    },
    "ja": {
        "A": ["部品を出荷し、モデル見直しのため誤検出の可能性として記録してください。"],
        "B": [
            "検査員が目視で部品を確認してください。",
            "良品であればフレームをモデルの見直し用データに追加してください。",
        ],
        "C": ["検査員が確認し、品質計画に従って出荷または手直ししてください。"],
        "D": ["手直しまたは廃棄のため部品を保留してください。", "ステーションで再発原因を点検してください。"],
        "E": ["部品を廃棄または隔離してください。", "上流工程を直ちに点検してください。"],
        "F": ["部品と直近のロットを隔離してください。", "上流工程を停止して点検してください。"],
    },
}


def text(language: str, key: str, **values: object) -> str:
    template = TEXTS[language][key]
    return template.format(**values) if values else template


def position_words(language: str, code: str) -> str:
    return POSITIONS[language].get(code, code)


def severity_word(language: str, severity: str) -> str:
    return SEVERITY_WORDS[language].get(severity, severity)
